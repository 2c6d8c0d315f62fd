using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace ShareGPT4V.Evaluation;

/// <summary>
/// Reads a benchmark's question file in the format the reference runner reads, and builds each question's prompt
/// as that runner does (see docs/evaluation.md for the sources of every string).
/// </summary>
public static class QuestionFile
{
    /// <summary>Reads the questions, in file order.</summary>
    /// <param name="path">Question file: LLaVA jsonl (loader / open-ended), SQA json (<c>llava_test_CQM-A.json</c>), MMBench TSV, Q-Bench json.</param>
    /// <param name="settings">The benchmark's run settings (prompt style and language).</param>
    /// <param name="imageFolder">Folder the image names are relative to (not used by MMBench, whose images are inline).</param>
    /// <exception cref="EvaluationDataException">A malformed record (message names the file and line / record).</exception>
    public static IReadOnlyList<EvalQuestion> Read(string path, BenchmarkRunSettings settings, string? imageFolder = null) => settings.Style switch
    {
        PromptStyle.Loader or PromptStyle.OpenEnded => ReadLoader(path, imageFolder),
        PromptStyle.Science => ReadScience(path, imageFolder),
        PromptStyle.MmBench => ReadMmBench(path, settings.Language is "cn" or "zh"),
        PromptStyle.QBench => ReadQBench(path, imageFolder, settings.Language is "zh" or "cn"),
        _ => throw new ArgumentOutOfRangeException(nameof(settings)),
    };

    private static string Join(string? folder, string file) => folder is null ? file : Path.Combine(folder, file);

    private static IReadOnlyList<EvalQuestion> ReadLoader(string path, string? imageFolder)
    {
        var list = new List<EvalQuestion>();
        foreach (var (line, e) in JsonLines.Read(path))
        {
            var id = JsonLines.Key(e, "question_id", path, line);
            var text = JsonLines.String(e, "text", path, line);
            var image = JsonLines.String(e, "image", path, line);
            // model_vqa_loader / model_vqa: "<image>\n" + text; the stored prompt is the question file's text.
            list.Add(new EvalQuestion(id, text, PromptBuilder.ImageLead + text, Join(imageFolder, image), null, $"{path}:{line}"));
        }
        return list;
    }

    private static IReadOnlyList<EvalQuestion> ReadScience(string path, string? imageFolder)
    {
        var root = JsonLines.ReadDocument(path);
        if (root.ValueKind != JsonValueKind.Array) throw new EvaluationDataException("The ScienceQA question file must be a JSON list", path);
        var list = new List<EvalQuestion>();
        int record = 0;
        foreach (var e in root.EnumerateArray())
        {
            record++;
            var id = JsonLines.Key(e, "id", path, record);
            var convs = JsonLines.Property(e, "conversations", path, record);
            if (convs.ValueKind != JsonValueKind.Array || convs.GetArrayLength() == 0)
                throw new EvaluationDataException($"record {record} has no conversations", path);
            var value = JsonLines.String(convs[0], "value", path, record);
            // model_vqa_science: markers out, stripped; image lead only when the problem has an image; then the letter suffix.
            var qs = PythonText.Strip(value.Replace("<image>", "", StringComparison.Ordinal));
            string prompt = qs, query = qs;
            string? image = null;
            if (e.TryGetProperty("image", out var img) && img.ValueKind == JsonValueKind.String)
            {
                image = Join(imageFolder, img.GetString()!);
                query = PromptBuilder.ImageLead + query;
                prompt = PromptBuilder.ImageLead + prompt;
            }
            query += "\n" + PromptBuilder.LetterAnswer;
            prompt += "\n" + PromptBuilder.LetterAnswer;
            list.Add(new EvalQuestion(id, prompt, query, image, null, $"{path}: record {record}"));
        }
        return list;
    }

    private static bool IsNone(string? v) => v is null || v.Equals("nan", StringComparison.OrdinalIgnoreCase) || v.Equals("none", StringComparison.OrdinalIgnoreCase);

    private static IReadOnlyList<EvalQuestion> ReadMmBench(string path, bool chinese)
    {
        var table = TsvTable.Read(path);
        int cIndex = table.Column("index"), cQuestion = table.Column("question"), cHint = table.Column("hint", required: false), cImage = table.Column("image");
        var optionColumns = PromptBuilder.MmBenchLetters.Select(l => table.Column(l, required: false)).ToArray();
        var list = new List<EvalQuestion>();
        foreach (var (line, f) in table.Rows)
        {
            var indexText = TsvTable.Value(f, cIndex);
            if (indexText is null || !long.TryParse(indexText, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var index))
                throw new EvaluationDataException($"The row's index '{indexText}' is not an integer", path, line);
            var options = new List<string>();
            foreach (var c in optionColumns)
            {
                var v = c < 0 ? null : TsvTable.Value(f, c);
                if (IsNone(v)) break;
                options.Add(v!);
            }
            var hint = TsvTable.Value(f, cHint);
            var question = PromptBuilder.MmBenchQuestion(TsvTable.Value(f, cQuestion) ?? "", IsNone(hint) ? null : hint, options);
            var query = PromptBuilder.ImageLead + question + "\n" + (chinese ? PromptBuilder.LetterAnswerChinese : PromptBuilder.LetterAnswer);
            var b64 = TsvTable.Value(f, cImage) ?? throw new EvaluationDataException("The row has no image", path, line);
            byte[] bytes;
            try { bytes = Convert.FromBase64String(b64); }
            catch (FormatException ex) { throw new EvaluationDataException("The row's image is not valid base64", path, line, ex); }
            var extra = new JsonObject
            {
                ["round_id"] = 0,
                ["options"] = new JsonArray(options.Select(o => (JsonNode?)JsonValue.Create(o)).ToArray()),
                ["option_char"] = new JsonArray(PromptBuilder.MmBenchLetters.Take(options.Count).Select(o => (JsonNode?)JsonValue.Create(o)).ToArray()),
            };
            list.Add(new EvalQuestion(QuestionKey.Number(index), question, query, null, bytes, $"{path}:{line}") { Extra = extra });
        }
        return list;
    }

    private static IReadOnlyList<EvalQuestion> ReadQBench(string path, string? imageFolder, bool chinese)
    {
        var root = JsonLines.ReadDocument(path);
        if (root.ValueKind != JsonValueKind.Array) throw new EvaluationDataException("The Q-Bench question file must be a JSON list", path);
        var list = new List<EvalQuestion>();
        int record = 0;
        foreach (var e in root.EnumerateArray())
        {
            record++;
            var image = JsonLines.String(e, "img_path", path, record);
            var question = JsonLines.String(e, "question", path, record);
            var candidates = JsonLines.Property(e, "candidates", path, record);
            if (candidates.ValueKind != JsonValueKind.Array) throw new EvaluationDataException($"record {record} has no candidate list", path);
            var message = PromptBuilder.QBenchMessage(question, candidates.EnumerateArray().Select(c => c.ValueKind == JsonValueKind.String ? c.GetString()! : c.GetRawText()).ToList(), chinese);
            var file = Join(imageFolder, image);
            var id = e.TryGetProperty("id", out var idEl) && idEl.ValueKind is JsonValueKind.String or JsonValueKind.Number
                ? QuestionKey.FromJson(idEl) : QuestionKey.Number(record - 1);
            list.Add(new EvalQuestion(id, message, PromptBuilder.ImageLead + message, file, null, $"{path}: record {record}"));
        }
        return list;
    }
}
