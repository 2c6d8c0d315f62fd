using System.Text;
using System.Text.RegularExpressions;

namespace ShareGPT4V.Hub;

/// <summary>
/// fnmatch-style patterns as huggingface_hub's allow_patterns use them: <c>*</c> (any run of characters, <c>/</c>
/// included), <c>?</c>, <c>[abc]</c>, <c>[!abc]</c>; a pattern ending in <c>/</c> means everything under that folder.
/// </summary>
internal static class Glob
{
    public static bool MatchesAny(IEnumerable<string> patterns, string path) => patterns.Any(p => ToRegex(p).IsMatch(path));

    public static Regex ToRegex(string pattern)
    {
        if (pattern.EndsWith('/')) pattern += "*";
        var sb = new StringBuilder("^");
        for (int i = 0; i < pattern.Length; i++)
        {
            char c = pattern[i];
            switch (c)
            {
                case '*': sb.Append(".*"); break;
                case '?': sb.Append('.'); break;
                case '[':
                    int end = pattern.IndexOf(']', i + 2);
                    if (end < 0) { sb.Append(@"\["); break; }
                    var body = pattern[(i + 1)..end];
                    sb.Append('[').Append(body.StartsWith('!') ? "^" + Regex.Escape(body[1..]) : Regex.Escape(body)).Append(']');
                    i = end;
                    break;
                default: sb.Append(Regex.Escape(c.ToString())); break;
            }
        }
        return new Regex(sb.Append('$').ToString(), RegexOptions.Singleline | RegexOptions.CultureInvariant);
    }
}
