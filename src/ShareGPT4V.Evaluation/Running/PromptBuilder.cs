using System.Text;
using ShareGPT4V.Conversation;

namespace ShareGPT4V.Evaluation;

/// <summary>
/// The prompt strings of the reference evaluation scripts (LLaVA's <c>model_vqa_*</c>, ShareGPT4V's
/// <c>model_vqa_qbench</c>), and the conversation text they render.
/// </summary>
public static class PromptBuilder
{
    /// <summary>The short-answer instruction that LLaVA's question files append to open questions.</summary>
    public const string ShortAnswer = "Answer the question using a single word or phrase.";
    /// <summary><c>--single-pred-prompt</c> instruction (SQA, MMBench, SEED question files).</summary>
    public const string LetterAnswer = "Answer with the option's letter from the given choices directly.";
    /// <summary>MMBench-CN's instruction (<c>--lang cn</c>).</summary>
    public const string LetterAnswerChinese = "请直接回答选项字母。";
    /// <summary>Q-Bench's English option lead-in.</summary>
    public const string QBenchChoose = "\nChoose between one of the options as follows:\n";
    /// <summary>Q-Bench's Chinese lead-in, with the stray backslash of the reference string (Python keeps an unknown escape).</summary>
    public const string QBenchChooseChinese = "\\在下列选项中选择一个:\n";
    /// <summary>The image marker the reference puts before the question.</summary>
    public const string ImageLead = "<image>\n";

    /// <summary>The option letters MMBench uses.</summary>
    public static readonly IReadOnlyList<string> MmBenchLetters = new[] { "A", "B", "C", "D" };

    /// <summary>
    /// Renders a one-turn conversation exactly as LLaVA's <c>Conversation.get_prompt()</c>: the user turn is used as
    /// it is (no trimming, the image marker already in place).
    /// </summary>
    public static string Render(ConversationTemplate template, string query)
    {
        var sb = new StringBuilder();
        switch (template.Style)
        {
            case SeparatorStyle.Single:
            case SeparatorStyle.Two:
                sb.Append(template.SystemPrompt).Append(template.Separator)
                  .Append(template.UserRole).Append(": ").Append(query).Append(template.Separator)
                  .Append(template.AssistantRole).Append(':');
                return sb.ToString();
            default:
                // Other templates (llava_hf, llama_2, ...): the library's builder, which moves the image marker to the front.
                int images = CountImageMarkers(query);
                return new ConversationBuilder(template).AddUser(query, images).BuildPrompt();
        }
    }

    /// <summary>MMBench's question: hint (when present) + question + "\nX. option" lines.</summary>
    public static string MmBenchQuestion(string question, string? hint, IReadOnlyList<string> options)
    {
        var q = hint is null ? question : hint + "\n" + question;
        for (int i = 0; i < options.Count; i++) q += "\n" + MmBenchLetters[i] + ". " + options[i];
        return q;
    }

    /// <summary>Q-Bench's message: question, lead-in and "A. candidate\n" lines (at most four, as the reference zips with A–D).</summary>
    public static string QBenchMessage(string question, IReadOnlyList<string> candidates, bool chinese)
    {
        var sb = new StringBuilder(question).Append(chinese ? QBenchChooseChinese : QBenchChoose);
        string[] letters = { "A.", "B.", "C.", "D." };
        for (int i = 0; i < Math.Min(4, candidates.Count); i++) sb.Append(letters[i]).Append(' ').Append(candidates[i]).Append('\n');
        return sb.ToString();
    }

    private static int CountImageMarkers(string text)
    {
        const string marker = "<image>";
        int count = 0;
        for (int i = text.IndexOf(marker, StringComparison.Ordinal); i >= 0; i = text.IndexOf(marker, i + marker.Length, StringComparison.Ordinal))
            count++;
        return count;
    }
}
