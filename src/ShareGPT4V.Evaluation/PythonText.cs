using System.Text;

namespace ShareGPT4V.Evaluation;

/// <summary>The few Python string operations the official scorers use, with Python's exact semantics.</summary>
internal static class PythonText
{
    // Python's str.isspace also counts the separators U+001C..U+001F, which .NET does not.
    private static readonly char[] Whitespace = Enumerable.Range(0, 0x10000).Select(i => (char)i)
        .Where(c => char.IsWhiteSpace(c) || c is >= '\x1c' and <= '\x1f').ToArray();

    /// <summary><c>str.split()</c> without arguments: runs of whitespace separate, no empty pieces.</summary>
    public static string[] SplitWhitespace(string s) => s.Split(Whitespace, StringSplitOptions.RemoveEmptyEntries);

    /// <summary><c>str.strip()</c>.</summary>
    public static string Strip(string s) => s.Trim(Whitespace);

    /// <summary><c>str.lower()</c> (the scorers' data is ASCII in practice; invariant lower-casing elsewhere).</summary>
    public static string Lower(string s) => s.ToLowerInvariant();

    /// <summary><c>str.rstrip(ch)</c>.</summary>
    public static string RStrip(string s, char ch) => s.TrimEnd(ch);

    /// <summary><c>str.split('\n')</c> (keeps empty pieces).</summary>
    public static string[] SplitLines(string s) => s.Split('\n');

    /// <summary>Replaces every occurrence, as <c>str.replace</c>.</summary>
    public static string Replace(string s, string a, string b) => a.Length == 0 ? s : s.Replace(a, b, StringComparison.Ordinal);

    /// <summary>Joins with single spaces.</summary>
    public static string JoinSpace(IEnumerable<string> words)
    {
        var sb = new StringBuilder();
        foreach (var w in words) { if (sb.Length > 0) sb.Append(' '); sb.Append(w); }
        return sb.ToString();
    }
}
