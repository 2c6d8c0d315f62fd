using System.Buffers.Binary;
using System.Text;

namespace ShareGPT4V.Fuzzing;

/// <summary>
/// A seeded, deterministic mutation engine for when no coverage-guided fuzzer runs (the test suite, or a machine
/// without afl-fuzz). Each call stacks one to four mutations: bit flips, interesting byte and integer values
/// (little- and big-endian, 1 to 8 bytes, so length fields and offsets get 0, -1, 2^31, 2^60, ...), block deletion,
/// duplication and insertion, truncation, splicing with another seed, and, for JSON text, edits of numbers, strings and
/// structure (huge and negative sizes, wrong types, missing brackets).
/// </summary>
public sealed class Mutator
{
    private static readonly long[] InterestingIntegers =
    [
        0, 1, -1, 2, 7, 8, 16, 127, 128, 255, 256, 4095, 4096, 32767, 32768, 65535, 65536,
        int.MaxValue, (long)int.MaxValue + 1, uint.MaxValue, (long)uint.MaxValue + 1, 1L << 40, 1L << 60, long.MaxValue, long.MinValue,
    ];

    private static readonly string[] InterestingJsonValues =
    [
        "0", "-1", "1", "2", "3", "1000000000", "1000000000000", "2147483647", "2147483648", "-2147483649", "4294967296",
        "1152921504606846976", "9223372036854775807", "18446744073709551616", "1e308", "1e309", "-0", "0.5", "3.5", "NaN",
        "null", "true", "false", "\"\"", "\"x\"", "\"F32\"", "\"BF16\"", "[]", "{}", "[1,2]", "[-1]", "{\"a\":1}",
        "\"../../etc/passwd\"", "\"/etc/passwd\"", "\"\\u0000\"", "\"\\ud800\"",
    ];

    private readonly Random _rng;

    public Mutator(int seed) => _rng = new Random(seed);

    /// <summary>A mutated copy of <paramref name="input"/>; <paramref name="pool"/> supplies splice partners.</summary>
    public byte[] Mutate(byte[] input, IReadOnlyList<byte[]> pool)
    {
        var data = new List<byte>(input);
        bool json = LooksLikeJson(input);
        int rounds = 1 + _rng.Next(4);
        for (int i = 0; i < rounds; i++)
        {
            if (json && _rng.Next(3) != 0) data = JsonEdit(data);
            else ByteEdit(data, pool);
        }
        return data.ToArray();
    }

    private static bool LooksLikeJson(byte[] b)
    {
        foreach (var c in b)
        {
            if (c is (byte)' ' or (byte)'\n' or (byte)'\r' or (byte)'\t') continue;
            return c is (byte)'{' or (byte)'[';
        }
        return false;
    }

    private void ByteEdit(List<byte> d, IReadOnlyList<byte[]> pool)
    {
        int Pos() => d.Count == 0 ? 0 : _rng.Next(d.Count);
        switch (_rng.Next(11))
        {
            case 0 when d.Count > 0: // flip one bit
            {
                int p = Pos();
                d[p] ^= (byte)(1 << _rng.Next(8));
                break;
            }
            case 1 when d.Count > 0: // interesting byte
                d[Pos()] = new byte[] { 0, 1, 0x7f, 0x80, 0xff, (byte)'\n', (byte)'{', (byte)'"' }[_rng.Next(8)];
                break;
            case 2 when d.Count > 0: // random byte
                d[Pos()] = (byte)_rng.Next(256);
                break;
            case 3 or 4 when d.Count >= 8: // interesting integer over 1, 2, 4 or 8 bytes, either byte order
            {
                int width = new[] { 1, 2, 4, 8 }[_rng.Next(4)];
                int p = _rng.Next(d.Count - width + 1);
                long v = InterestingIntegers[_rng.Next(InterestingIntegers.Length)];
                if (_rng.Next(4) == 0) v += _rng.Next(-3, 4);
                Span<byte> b = stackalloc byte[8];
                if (_rng.Next(2) == 0) BinaryPrimitives.WriteInt64LittleEndian(b, v);
                else { BinaryPrimitives.WriteInt64BigEndian(b, v); b = b[(8 - width)..]; }
                for (int k = 0; k < width; k++) d[p + k] = b[k];
                break;
            }
            case 5 when d.Count > 1: // delete a block
            {
                int p = Pos();
                int n = Math.Min(d.Count - p, 1 + _rng.Next(Math.Max(1, Math.Min(256, d.Count / 4))));
                d.RemoveRange(p, n);
                break;
            }
            case 6 when d.Count > 0: // duplicate a block
            {
                int p = Pos();
                int n = Math.Min(d.Count - p, 1 + _rng.Next(64));
                var block = d.GetRange(p, n);
                d.InsertRange(_rng.Next(d.Count + 1), block);
                break;
            }
            case 7: // insert random bytes
            {
                var block = new byte[1 + _rng.Next(16)];
                _rng.NextBytes(block);
                d.InsertRange(_rng.Next(d.Count + 1), block);
                break;
            }
            case 8 when d.Count > 0: // truncate
            {
                int keep = _rng.Next(d.Count);
                d.RemoveRange(keep, d.Count - keep);
                break;
            }
            case 9 when pool.Count > 0 && d.Count > 0: // splice: our head, another seed's tail
            {
                var other = pool[_rng.Next(pool.Count)];
                if (other.Length == 0) break;
                int cut = Pos();
                int from = _rng.Next(other.Length);
                d.RemoveRange(cut, d.Count - cut);
                d.AddRange(other.AsSpan(from).ToArray());
                break;
            }
            default: // overwrite a block with a copy of another place
            {
                if (d.Count < 2) break;
                int src = Pos(), dst = Pos();
                int n = Math.Min(Math.Min(d.Count - src, d.Count - dst), 1 + _rng.Next(32));
                var block = d.GetRange(src, n);
                for (int k = 0; k < n; k++) d[dst + k] = block[k];
                break;
            }
        }
    }

    /// <summary>Text-level edits that keep most of a JSON document intact, so the parser gets past the syntax.</summary>
    private List<byte> JsonEdit(List<byte> d)
    {
        var text = Encoding.UTF8.GetString(d.ToArray());
        if (text.Length == 0) return d;
        string result;
        switch (_rng.Next(6))
        {
            case 0 or 1: // replace a number or literal value with an interesting one
            {
                var spans = ValueSpans(text);
                if (spans.Count == 0) goto default;
                var (start, length) = spans[_rng.Next(spans.Count)];
                result = text[..start] + InterestingJsonValues[_rng.Next(InterestingJsonValues.Length)] + text[(start + length)..];
                break;
            }
            case 2: // replace a string literal's content
            {
                var strings = StringSpans(text);
                if (strings.Count == 0) goto default;
                var (start, length) = strings[_rng.Next(strings.Count)];
                var replacement = InterestingJsonValues[_rng.Next(InterestingJsonValues.Length)];
                result = text[..start] + replacement + text[(start + length)..];
                break;
            }
            case 3: // drop a structural character
            {
                var positions = Enumerable.Range(0, text.Length).Where(i => text[i] is '{' or '}' or '[' or ']' or ',' or ':' or '"').ToList();
                if (positions.Count == 0) goto default;
                int p = positions[_rng.Next(positions.Count)];
                result = text.Remove(p, 1);
                break;
            }
            case 4: // duplicate a "key": value pair
            {
                var strings = StringSpans(text);
                if (strings.Count == 0) goto default;
                var (start, length) = strings[_rng.Next(strings.Count)];
                int end = text.IndexOfAny([',', '}'], start + length);
                if (end < 0) goto default;
                var pair = text[start..end];
                result = text[..start] + pair + "," + text[start..];
                break;
            }
            default: // insert an interesting value somewhere
            {
                int p = _rng.Next(text.Length + 1);
                result = text[..p] + InterestingJsonValues[_rng.Next(InterestingJsonValues.Length)] + text[p..];
                break;
            }
        }
        return new List<byte>(Encoding.UTF8.GetBytes(result));
    }

    /// <summary>Spans of numbers and of true/false/null outside strings.</summary>
    private static List<(int Start, int Length)> ValueSpans(string s)
    {
        var spans = new List<(int, int)>();
        bool inString = false;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (inString)
            {
                if (c == '\\') i++;
                else if (c == '"') inString = false;
                continue;
            }
            if (c == '"') { inString = true; continue; }
            if (c == '-' || char.IsAsciiDigit(c) || c is 't' or 'f' or 'n')
            {
                int j = i;
                while (j < s.Length && (char.IsAsciiLetterOrDigit(s[j]) || s[j] is '-' or '+' or '.')) j++;
                spans.Add((i, j - i));
                i = j - 1;
            }
        }
        return spans;
    }

    /// <summary>Spans of string literals, quotes included.</summary>
    private static List<(int Start, int Length)> StringSpans(string s)
    {
        var spans = new List<(int, int)>();
        for (int i = 0; i < s.Length; i++)
        {
            if (s[i] != '"') continue;
            int j = i + 1;
            while (j < s.Length && s[j] != '"') j += s[j] == '\\' ? 2 : 1;
            if (j >= s.Length) break;
            spans.Add((i, j - i + 1));
            i = j;
        }
        return spans;
    }
}
