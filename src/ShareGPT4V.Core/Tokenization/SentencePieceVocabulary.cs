namespace ShareGPT4V.Tokenization;

/// <summary>Kind of a SentencePiece piece (the numbering of sentencepiece_model.proto).</summary>
internal enum PieceKind
{
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

/// <summary>
/// The pieces, scores and flags of a SentencePiece BPE model, whichever file they came from.
/// Immutable after construction, so one instance is shared by concurrent encoders.
/// </summary>
internal sealed class SentencePieceVocabulary
{
    /// <summary>Most pieces a tokenizer file may define (the largest vocab_size a config may declare, 2^21).</summary>
    public const int MaxPieces = 1 << 21;
    /// <summary>Most added tokens accepted: each is searched for in every text encoded.</summary>
    public const int MaxAddedTokens = 1 << 16;
    /// <summary>Longest piece accepted, in UTF-16 units. BPE work per merge grows with it; real LLaMA pieces are at most 16.</summary>
    public const int MaxPieceChars = 1024;

    public IReadOnlyList<string> Pieces { get; }
    public IReadOnlyList<float> Scores { get; }
    public IReadOnlyList<PieceKind> Kinds { get; }
    public int UnknownId { get; }
    public bool ByteFallback { get; }
    public bool AddDummyPrefix { get; }
    public bool RemoveExtraWhitespaces { get; }

    /// <summary>Pieces BPE may produce by merging (SentencePiece excludes control, unknown and byte pieces).</summary>
    public IReadOnlyDictionary<string, int> Mergeable { get; }

    /// <summary>Every piece text to id (first occurrence wins), used for lookups of special tokens.</summary>
    public IReadOnlyDictionary<string, int> AllPieces { get; }

    /// <summary>Id of the &lt;0xNN&gt; piece for every byte value, or -1.</summary>
    public int[] ByteIds { get; }

    /// <summary>Byte value of each piece that is a byte piece, or -1.</summary>
    public short[] ByteValueOfId { get; }

    /// <summary>Longest mergeable piece in UTF-16 units: longer candidates are not looked up at all.</summary>
    public int MaxPieceLength { get; }

    public int Count => Pieces.Count;

    public SentencePieceVocabulary(IReadOnlyList<string> pieces, IReadOnlyList<float> scores, IReadOnlyList<PieceKind> kinds,
        int unknownId, bool byteFallback, bool addDummyPrefix, bool removeExtraWhitespaces)
    {
        Pieces = pieces;
        Scores = scores;
        Kinds = kinds;
        UnknownId = unknownId;
        ByteFallback = byteFallback;
        AddDummyPrefix = addDummyPrefix;
        RemoveExtraWhitespaces = removeExtraWhitespaces;

        var mergeable = new Dictionary<string, int>(pieces.Count, StringComparer.Ordinal);
        var all = new Dictionary<string, int>(pieces.Count, StringComparer.Ordinal);
        ByteIds = Enumerable.Repeat(-1, 256).ToArray();
        ByteValueOfId = new short[pieces.Count];
        int maxLen = 1;
        for (int id = 0; id < pieces.Count; id++)
        {
            var piece = pieces[id];
            all.TryAdd(piece, id);
            ByteValueOfId[id] = -1;
            switch (kinds[id])
            {
                case PieceKind.Normal or PieceKind.UserDefined or PieceKind.Unused:
                    if (mergeable.TryAdd(piece, id)) maxLen = Math.Max(maxLen, piece.Length);
                    break;
                case PieceKind.Byte:
                    int b = ParseBytePiece(piece);
                    if (b >= 0)
                    {
                        if (ByteIds[b] < 0) ByteIds[b] = id;
                        ByteValueOfId[id] = (short)b;
                    }
                    break;
            }
        }
        Mergeable = mergeable;
        AllPieces = all;
        MaxPieceLength = maxLen;
    }

    /// <summary>"&lt;0x0A&gt;" → 10; anything else → -1.</summary>
    public static int ParseBytePiece(string piece)
    {
        if (piece.Length != 6 || !piece.StartsWith("<0x", StringComparison.Ordinal) || piece[5] != '>') return -1;
        return int.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out int v) ? v : -1;
    }
}
