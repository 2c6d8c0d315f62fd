using System.Text;

namespace ShareGPT4V.Tokenization;

/// <summary>
/// Reads the parts of a SentencePiece <c>tokenizer.model</c> (a ModelProto protobuf) that BPE encoding needs.
/// Hand-rolled because only a handful of fields matter and the file is untrusted input: every length is
/// bounds-checked and any inconsistency becomes a <see cref="ModelConfigurationException"/>.
/// </summary>
internal static class SentencePieceModelReader
{
    private const int BpeModelType = 2;

    public static SentencePieceVocabulary Read(byte[] data, string fileName)
    {
        var pieces = new List<string>();
        var scores = new List<float>();
        var kinds = new List<PieceKind>();
        int modelType = 1; // proto default: UNIGRAM
        bool byteFallback = false;
        int unkId = 0;
        bool addDummyPrefix = true, removeExtraWhitespaces = true;
        string normalizerName = "";
        int charsMapLength = 0;

        try
        {
            var top = new ProtoReader(data, 0, data.Length);
            while (top.Next(out int field, out int wire))
            {
                if (field == 1 && wire == 2)
                {
                    var (start, end) = top.ReadLengthDelimited();
                    if (pieces.Count >= SentencePieceVocabulary.MaxPieces)
                        throw new FormatException($"more than {SentencePieceVocabulary.MaxPieces} pieces");
                    var (piece, score, kind) = ReadPiece(data, start, end);
                    if (piece.Length > SentencePieceVocabulary.MaxPieceChars)
                        throw new FormatException($"piece {pieces.Count} is {piece.Length} characters long, more than the {SentencePieceVocabulary.MaxPieceChars} accepted");
                    pieces.Add(piece); scores.Add(score); kinds.Add(kind);
                }
                else if (field == 2 && wire == 2)
                {
                    var (start, end) = top.ReadLengthDelimited();
                    var trainer = new ProtoReader(data, start, end);
                    while (trainer.Next(out int f, out int w))
                    {
                        if (w != 0) { trainer.Skip(w); continue; }
                        long v = trainer.ReadVarint();
                        switch (f)
                        {
                            case 3: modelType = (int)v; break;
                            case 35: byteFallback = v != 0; break;
                            case 40: unkId = (int)v; break;
                        }
                    }
                }
                else if (field == 3 && wire == 2)
                {
                    var (start, end) = top.ReadLengthDelimited();
                    var norm = new ProtoReader(data, start, end);
                    while (norm.Next(out int f, out int w))
                    {
                        if (f == 1 && w == 2) { var (s, e) = norm.ReadLengthDelimited(); normalizerName = Encoding.UTF8.GetString(data, s, e - s); }
                        else if (f == 2 && w == 2) { var (s, e) = norm.ReadLengthDelimited(); charsMapLength = e - s; }
                        else if (f == 3 && w == 0) addDummyPrefix = norm.ReadVarint() != 0;
                        else if (f == 4 && w == 0) removeExtraWhitespaces = norm.ReadVarint() != 0;
                        else norm.Skip(w);
                    }
                }
                else top.Skip(wire);
            }
        }
        catch (FormatException ex)
        {
            throw new ModelConfigurationException($"Malformed SentencePiece model: {ex.Message}", fileName, inner: ex);
        }

        if (pieces.Count == 0)
            throw new ModelConfigurationException("SentencePiece model has no pieces (not a tokenizer.model file?)", fileName);
        if (modelType != BpeModelType)
            throw new ModelConfigurationException($"Only SentencePiece BPE models (LLaMA family) are supported; this one has model_type {modelType}", fileName);
        // LLaMA's normalizer is the identity; a precompiled NFKC map would change the text and is not implemented.
        if (charsMapLength > 0 && normalizerName != "identity")
            throw new ModelConfigurationException($"SentencePiece normalizer '{normalizerName}' is not supported (only 'identity')", fileName);
        if (unkId < 0 || unkId >= pieces.Count)
            throw new ModelConfigurationException($"unk_id {unkId} is outside the {pieces.Count} pieces", fileName);

        return new SentencePieceVocabulary(pieces, scores, kinds, unkId, byteFallback, addDummyPrefix, removeExtraWhitespaces);
    }

    private static (string piece, float score, PieceKind kind) ReadPiece(byte[] data, int start, int end)
    {
        string? piece = null;
        float score = 0;
        var kind = PieceKind.Normal;
        var r = new ProtoReader(data, start, end);
        while (r.Next(out int f, out int w))
        {
            if (f == 1 && w == 2) { var (s, e) = r.ReadLengthDelimited(); piece = Encoding.UTF8.GetString(data, s, e - s); }
            else if (f == 2 && w == 5) score = r.ReadFloat();
            else if (f == 3 && w == 0)
            {
                long k = r.ReadVarint();
                if (k < 1 || k > 6) throw new FormatException($"unknown piece type {k}");
                kind = (PieceKind)k;
            }
            else r.Skip(w);
        }
        return (piece ?? throw new FormatException("a piece has no text"), score, kind);
    }

    /// <summary>Minimal protobuf wire-format cursor over a byte range.</summary>
    private struct ProtoReader(byte[] data, int pos, int end)
    {
        private int _pos = pos;

        public bool Next(out int field, out int wire)
        {
            if (_pos >= end) { field = wire = 0; return false; }
            long key = ReadVarint();
            field = (int)(key >> 3);
            wire = (int)(key & 7);
            if (field <= 0) throw new FormatException($"invalid field number at byte {_pos}");
            return true;
        }

        public long ReadVarint()
        {
            long result = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (_pos >= end) throw new FormatException("truncated varint");
                byte b = data[_pos++];
                result |= (long)(b & 0x7F) << shift;
                if ((b & 0x80) == 0) return result;
            }
            throw new FormatException("varint longer than 10 bytes");
        }

        public float ReadFloat()
        {
            if (end - _pos < 4) throw new FormatException("truncated float");
            float v = BitConverter.ToSingle(data, _pos); // protobuf fixed32 is little-endian, as is every supported platform
            _pos += 4;
            return v;
        }

        public (int start, int end) ReadLengthDelimited()
        {
            long len = ReadVarint();
            if (len < 0 || len > end - _pos) throw new FormatException($"length {len} runs past the end of the data");
            int start = _pos;
            _pos += (int)len;
            return (start, _pos);
        }

        public void Skip(int wire)
        {
            switch (wire)
            {
                case 0: ReadVarint(); break;
                case 1: Advance(8); break;
                case 2: ReadLengthDelimited(); break;
                case 5: Advance(4); break;
                default: throw new FormatException($"unsupported wire type {wire}");
            }
        }

        private void Advance(int n)
        {
            if (end - _pos < n) throw new FormatException("truncated field");
            _pos += n;
        }
    }
}
