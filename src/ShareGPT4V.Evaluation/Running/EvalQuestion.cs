using System.Text.Json.Nodes;

namespace ShareGPT4V.Evaluation;

/// <summary>
/// One question ready to run: the id and <c>prompt</c> the answer line will carry, the user turn the model sees,
/// and its image.
/// </summary>
/// <param name="Id">The question id, as the reference question file carries it.</param>
/// <param name="Prompt">The answer file's <c>prompt</c> (what the reference stores as <c>cur_prompt</c>).</param>
/// <param name="Query">The user turn given to the conversation template (with <c>&lt;image&gt;\n</c> in front when there is an image).</param>
/// <param name="ImagePath">The image file (already joined with the image folder), or null.</param>
/// <param name="ImageBytes">The encoded image when the question file embeds it (MMBench), or null.</param>
/// <param name="Source">Where the question came from (file and 1-based line or record), for messages.</param>
public sealed record EvalQuestion(QuestionKey Id, string Prompt, string Query, string? ImagePath, byte[]? ImageBytes, string Source)
{
    /// <summary>Fields written after <c>prompt</c>/<c>text</c> in the answer line (MMBench: <c>round_id</c>, <c>options</c>, <c>option_char</c>).</summary>
    public JsonObject? Extra { get; init; }

    /// <summary>True when the question has an image.</summary>
    public bool HasImage => ImagePath is not null || ImageBytes is not null;

    /// <summary>What identifies the question inside an answer file (ids repeat: MME and TextVQA share ids between questions).</summary>
    public string ResumeKey => AnswerKey(Id, Prompt, Extra?["round_id"]?.GetValue<int>() ?? 0);

    internal static string AnswerKey(QuestionKey id, string? prompt, int round) => $"{(id.IsNumber ? "n" : "s")}:{id.Value}\u0001{prompt}\u0001{round}";
}
