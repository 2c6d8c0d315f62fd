using System.Text;
using System.Text.Json;

namespace ShareGPT4V.Evaluation;

/// <summary>The outcome of <see cref="AnswerMerge.Merge"/>.</summary>
/// <param name="Written">Answer lines in the merged file.</param>
/// <param name="Duplicates">Repeated answers dropped (the first is kept).</param>
/// <param name="Missing">Questions with no answer in any input (only known when the questions are given).</param>
public sealed record MergeResult(int Written, int Duplicates, int Missing);

/// <summary>Joins shard answer files into one (what LLaVA's scripts do with <c>cat</c>), written to a temporary file then renamed.</summary>
public static class AnswerMerge
{
    /// <summary>
    /// Concatenates the inputs in the order given; with <paramref name="questionOrder"/> the lines are put in question
    /// order instead (answers for unknown questions go last). Repeated answers to one question keep the first.
    /// </summary>
    public static MergeResult Merge(IReadOnlyList<string> inputs, string output, IReadOnlyList<EvalQuestion>? questionOrder = null)
    {
        var lines = new List<(string Key, string Raw)>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        int duplicates = 0;
        foreach (var input in inputs)
        {
            if (!File.Exists(input)) throw new EvaluationDataException("The shard answer file does not exist", input);
            int n = 0;
            foreach (var raw in File.ReadLines(input, Encoding.UTF8))
            {
                n++;
                if (string.IsNullOrWhiteSpace(raw)) continue;
                var a = AnswerFile.Parse(raw, input, n);
                int round = a.Json.TryGetProperty("round_id", out var r) && r.ValueKind == JsonValueKind.Number ? r.GetInt32() : 0;
                var key = EvalQuestion.AnswerKey(a.QuestionId, a.Prompt, round);
                if (!seen.Add(key)) { duplicates++; continue; }
                lines.Add((key, raw));
            }
        }
        int missing = 0;
        if (questionOrder is not null)
        {
            var byKey = lines.ToDictionary(l => l.Key, l => l.Raw, StringComparer.Ordinal);
            var ordered = new List<(string, string)>();
            foreach (var q in questionOrder)
            {
                if (byKey.Remove(q.ResumeKey, out var raw)) ordered.Add((q.ResumeKey, raw));
                else missing++;
            }
            ordered.AddRange(lines.Where(l => byKey.ContainsKey(l.Key)));
            lines = ordered;
        }
        var tmp = output + ".tmp";
        File.WriteAllText(tmp, string.Concat(lines.Select(l => l.Raw + "\n")), new UTF8Encoding(false));
        File.Move(tmp, output, overwrite: true);
        return new MergeResult(lines.Count, duplicates, missing);
    }
}
