namespace ShareGPT4V.Conversation;

/// <summary>How a template joins the turns of a conversation (LLaVA's SeparatorStyle plus llava-hf and raw).</summary>
public enum SeparatorStyle
{
    /// <summary><c>{system}{sep}{Role}: {msg}{sep}...{Role}:</c> (LLaVA v0 / share4v_v0, sep "###").</summary>
    Single,
    /// <summary>As <see cref="Single"/> but user turns end with <c>sep</c> and assistant turns with <c>sep2</c> (vicuna_v1: " " and "&lt;/s&gt;").</summary>
    Two,
    /// <summary>LLaMA-2 chat: <c>[INST] &lt;&lt;SYS&gt;&gt;\n{system}\n&lt;&lt;/SYS&gt;&gt;\n\n{q} [/INST] {a} &lt;/s&gt;&lt;s&gt;[INST] ...</c>.</summary>
    Llama2,
    /// <summary>Stage-1 pretraining: image markers and text only, assistant turns end with sep ("\n").</summary>
    Plain,
    /// <summary>The llava-hf chat template: <c>USER: &lt;image&gt;\n{q} ASSISTANT: {a} USER: ...</c>, no system prompt by default.</summary>
    LlavaHf,
    /// <summary>Text used exactly as given; only missing image markers are added.</summary>
    Raw,
}

/// <summary>
/// A conversation template as data. <see cref="ConversationBuilder"/> renders it; <see cref="ConversationTemplates"/> holds the known ones.
/// </summary>
/// <param name="Name">Registry name, e.g. "vicuna_v1".</param>
/// <param name="SystemPrompt">Default system message ("" for none).</param>
/// <param name="UserRole">Role label of user turns ("USER", "Human").</param>
/// <param name="AssistantRole">Role label of assistant turns ("ASSISTANT", "Assistant").</param>
/// <param name="Style">How turns are joined.</param>
/// <param name="Separator">First separator (after the system message and user turns).</param>
/// <param name="Separator2">Second separator (after assistant turns) where the style has one.</param>
/// <param name="StopStrings">Strings that end a generated answer (LLaVA: sep2 for TWO-style templates, else sep).</param>
public sealed record ConversationTemplate(
    string Name,
    string SystemPrompt,
    string UserRole,
    string AssistantRole,
    SeparatorStyle Style,
    string Separator,
    string? Separator2,
    IReadOnlyList<string> StopStrings)
{
    /// <summary>
    /// Index of the earliest stop string in generated text, or -1. Streaming callers check the text decoded so far
    /// and cut there (a stop string may arrive split over several tokens).
    /// </summary>
    public int IndexOfStop(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        int best = -1;
        foreach (var stop in StopStrings)
        {
            if (stop.Length == 0) continue;
            int i = text.IndexOf(stop, StringComparison.Ordinal);
            if (i >= 0 && (best < 0 || i < best)) best = i;
        }
        return best;
    }

    /// <summary>LLaVA's answer clean-up: strip, cut at the first stop string, strip again.</summary>
    public string CleanAnswer(string decoded)
    {
        ArgumentNullException.ThrowIfNull(decoded);
        string text = decoded.Trim();
        int stop = IndexOfStop(text);
        return (stop >= 0 ? text[..stop] : text).Trim();
    }
}
