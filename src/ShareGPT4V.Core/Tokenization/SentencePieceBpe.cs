using System.Text;

namespace ShareGPT4V.Tokenization;

/// <summary>
/// SentencePiece BPE encoding: start from single characters, repeatedly merge the adjacent pair whose
/// concatenation is a vocabulary piece with the highest score (leftmost on ties), then map what is left to
/// ids, spelling unknown pieces as UTF-8 byte pieces (byte fallback). This is what the LLaMA tokenizer does;
/// the merge order comes from the scores, so no merges list is needed.
/// Stateless apart from the shared read-only vocabulary, so it is safe to call from several threads.
/// </summary>
internal sealed class SentencePieceBpe(SentencePieceVocabulary vocabulary)
{
    public const char WhitespaceSymbol = '\u2581';

    public SentencePieceVocabulary Vocabulary { get; } = vocabulary;

    /// <summary>SentencePiece normalisation: optional whitespace cleanup, spaces to ▁, optional dummy-prefix ▁.</summary>
    public string Normalize(string text, bool dummyPrefix)
    {
        if (Vocabulary.RemoveExtraWhitespaces) text = CollapseSpaces(text);
        if (text.Length == 0) return text;
        var sb = new StringBuilder(text.Length + 1);
        if (dummyPrefix) sb.Append(WhitespaceSymbol);
        foreach (char c in text) sb.Append(c == ' ' ? WhitespaceSymbol : c);
        return sb.ToString();
    }

    private static string CollapseSpaces(string text)
    {
        var sb = new StringBuilder(text.Length);
        bool pendingSpace = false;
        foreach (char c in text.Trim(' '))
        {
            if (c == ' ') { pendingSpace = true; continue; }
            if (pendingSpace) { sb.Append(' '); pendingSpace = false; }
            sb.Append(c);
        }
        return sb.ToString();
    }

    /// <summary>Encodes already-normalised text and appends the ids.</summary>
    public void Encode(string normalized, List<int> output)
    {
        int n = normalized.Length;
        if (n == 0) return;

        // Symbols are spans of the text kept as a doubly linked list; a merged-away symbol has length 0.
        var start = new int[n];
        var length = new int[n];
        var prev = new int[n];
        var next = new int[n];
        int count = 0;
        for (int i = 0; i < n; )
        {
            int len = char.IsHighSurrogate(normalized[i]) && i + 1 < n && char.IsLowSurrogate(normalized[i + 1]) ? 2 : 1;
            start[count] = i; length[count] = len;
            prev[count] = count - 1; next[count] = -1;
            if (count > 0) next[count - 1] = count;
            count++;
            i += len;
        }

        var agenda = new PriorityQueue<(int Left, int Right, int Total), (float Score, int Left)>(BestPairFirst.Instance);
        for (int i = 0; i + 1 < count; i++) TryQueue(normalized, agenda, start, length, i, i + 1);

        while (agenda.TryDequeue(out var pair, out _))
        {
            // Stale entries (a side was merged since) are recognised by adjacency and total length.
            if (length[pair.Left] == 0 || length[pair.Right] == 0 || next[pair.Left] != pair.Right
                || length[pair.Left] + length[pair.Right] != pair.Total) continue;
            length[pair.Left] = pair.Total;
            length[pair.Right] = 0;
            int after = next[pair.Right];
            next[pair.Left] = after;
            if (after >= 0) prev[after] = pair.Left;
            if (prev[pair.Left] >= 0) TryQueue(normalized, agenda, start, length, prev[pair.Left], pair.Left);
            if (after >= 0) TryQueue(normalized, agenda, start, length, pair.Left, after);
        }

        for (int s = 0; s >= 0; s = next[s])
        {
            var piece = normalized.Substring(start[s], length[s]);
            if (Vocabulary.Mergeable.TryGetValue(piece, out int id)) { output.Add(id); continue; }
            if (!Vocabulary.ByteFallback) { output.Add(Vocabulary.UnknownId); continue; }
            foreach (byte b in Encoding.UTF8.GetBytes(piece))
            {
                int byteId = Vocabulary.ByteIds[b];
                output.Add(byteId >= 0 ? byteId : Vocabulary.UnknownId);
            }
        }
    }

    private void TryQueue(string text, PriorityQueue<(int, int, int), (float, int)> agenda, int[] start, int[] length, int left, int right)
    {
        int total = length[left] + length[right];
        if (total > Vocabulary.MaxPieceLength) return;
        if (Vocabulary.Mergeable.TryGetValue(text.Substring(start[left], total), out int id))
            agenda.Enqueue((left, right, total), (Vocabulary.Scores[id], left));
    }

    /// <summary>Highest score first; among equal scores the leftmost pair (SentencePiece's order).</summary>
    private sealed class BestPairFirst : IComparer<(float Score, int Left)>
    {
        public static readonly BestPairFirst Instance = new();
        public int Compare((float Score, int Left) a, (float Score, int Left) b)
        {
            int c = b.Score.CompareTo(a.Score);
            return c != 0 ? c : a.Left.CompareTo(b.Left);
        }
    }
}
