using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ShareGPT4V.Evaluation;

/// <summary>
/// Appends answer lines to a LLaVA answer file so that an interrupted run can continue: each line goes out whole
/// and is flushed; on opening, a last line cut off by a crash (no newline, or not JSON) is dropped, and the
/// questions already answered are known.
/// </summary>
public sealed class AnswerFileWriter : IDisposable
{
    private readonly FileStream _stream;
    private readonly HashSet<string> _answered;

    /// <summary>The file written.</summary>
    public string Path { get; }
    /// <summary>Answer lines found in the file when it was opened.</summary>
    public int ExistingLines { get; }
    /// <summary>Bytes of a cut-off last line that were dropped on opening (0 when the file ended cleanly).</summary>
    public long DroppedBytes { get; }

    /// <summary>Opens (or creates) the answer file for appending.</summary>
    /// <exception cref="EvaluationDataException">A complete line of the existing file is not an answer line.</exception>
    public AnswerFileWriter(string path)
    {
        Path = path;
        var dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path));
        if (!string.IsNullOrEmpty(dir)) Directory.CreateDirectory(dir);
        _stream = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.Read);
        try
        {
            (_answered, ExistingLines, long keep) = Scan(_stream, path);
            DroppedBytes = _stream.Length - keep;
            if (DroppedBytes > 0) _stream.SetLength(keep);
            _stream.Seek(0, SeekOrigin.End);
        }
        catch
        {
            _stream.Dispose();
            throw;
        }
    }

    /// <summary>Whether the question already has an answer line in the file.</summary>
    public bool IsAnswered(EvalQuestion q) => _answered.Contains(q.ResumeKey);

    private static (HashSet<string>, int, long) Scan(FileStream s, string path)
    {
        var answered = new HashSet<string>(StringComparer.Ordinal);
        var bytes = new byte[s.Length];
        s.Seek(0, SeekOrigin.Begin);
        s.ReadExactly(bytes);
        int lines = 0, lineNo = 0;
        long keep = 0;
        int start = 0;
        while (start < bytes.Length)
        {
            int nl = Array.IndexOf(bytes, (byte)'\n', start);
            lineNo++;
            if (nl < 0) break; // cut off: no newline, dropped
            var text = Encoding.UTF8.GetString(bytes, start, nl - start);
            if (!string.IsNullOrWhiteSpace(text))
            {
                AnswerRecord a;
                try { a = AnswerFile.Parse(text, path, lineNo); }
                catch (EvaluationDataException) when (nl == bytes.Length - 1) { break; } // a torn last line
                int round = a.Json.TryGetProperty("round_id", out var r) && r.ValueKind == JsonValueKind.Number ? r.GetInt32() : 0;
                answered.Add(EvalQuestion.AnswerKey(a.QuestionId, a.Prompt, round));
                lines++;
            }
            keep = nl + 1;
            start = nl + 1;
        }
        return (answered, lines, keep);
    }

    /// <summary>The answer line the reference runner writes for a question.</summary>
    public static string FormatLine(EvalQuestion q, string text, string modelId, string? answerId = null)
    {
        var o = new JsonObject();
        o["question_id"] = q.Id.IsNumber ? JsonValue.Create(long.Parse(q.Id.Value, System.Globalization.CultureInfo.InvariantCulture)) : JsonValue.Create(q.Id.Value);
        bool mmbench = q.Extra is not null;
        if (mmbench) o["round_id"] = q.Extra!["round_id"]?.DeepClone();
        o["prompt"] = q.Prompt;
        o["text"] = text;
        if (mmbench)
            foreach (var (k, v) in q.Extra!)
                if (k != "round_id") o[k] = v?.DeepClone();
        o["answer_id"] = answerId ?? NewAnswerId();
        o["model_id"] = modelId;
        o["metadata"] = new JsonObject();
        return PythonJson.Serialize(o);
    }

    /// <summary>Appends answer lines and flushes them to disk.</summary>
    public void Append(IEnumerable<(EvalQuestion Question, string Line)> lines)
    {
        var sb = new StringBuilder();
        var keys = new List<string>();
        foreach (var (q, line) in lines) { sb.Append(line).Append('\n'); keys.Add(q.ResumeKey); }
        var bytes = Encoding.UTF8.GetBytes(sb.ToString());
        _stream.Write(bytes);
        _stream.Flush(flushToDisk: true);
        foreach (var k in keys) _answered.Add(k);
    }

    // shortuuid's default: 22 characters of a 57-letter alphabet (no 0, 1, I, O, l).
    private const string Alphabet = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

    /// <summary>A random answer id like the reference's <c>shortuuid.uuid()</c>.</summary>
    public static string NewAnswerId()
    {
        Span<char> c = stackalloc char[22];
        for (int i = 0; i < c.Length; i++) c[i] = Alphabet[RandomNumberGenerator.GetInt32(Alphabet.Length)];
        return new string(c);
    }

    /// <inheritdoc/>
    public void Dispose() => _stream.Dispose();
}
