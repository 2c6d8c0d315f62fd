using System.Text;
using ShareGPT4V.Tokenization;

namespace ShareGPT4V.Conversation;

/// <summary>Who wrote a message.</summary>
public enum ConversationRole
{
    /// <summary>The person asking; user turns may carry images.</summary>
    User,
    /// <summary>The model's earlier answers.</summary>
    Assistant,
}

/// <summary>One turn: its text and how many images come with it (user turns only).</summary>
public sealed record ConversationMessage(ConversationRole Role, string Text, int ImageCount = 0);

/// <summary>
/// Builds the prompt string of a conversation for a <see cref="ConversationTemplate"/>: system message, alternating
/// user/assistant turns starting with a user turn, images attached to user turns. Image markers go where LLaVA puts
/// them: markers written in a turn's text are taken out and one <c>&lt;image&gt;\n</c> per image is put at the start
/// of that turn (so the first image leads the first user turn). Not thread-safe; build one per request.
/// (Not named "Conversation": a type named like its namespace cannot be used by short name from ShareGPT4V.* code.)
/// </summary>
public sealed class ConversationBuilder
{
    private readonly List<ConversationMessage> _messages = [];

    /// <summary>The template the prompt is rendered with.</summary>
    public ConversationTemplate Template { get; }

    /// <summary>System message override; null uses the template's.</summary>
    public string? SystemPrompt { get; set; }

    /// <summary>The turns added so far, in order.</summary>
    public IReadOnlyList<ConversationMessage> Messages => _messages;

    /// <summary>Total number of images in the conversation, in prompt order.</summary>
    public int ImageCount => _messages.Sum(m => m.ImageCount);

    /// <summary>Strings that end a generated answer for this template.</summary>
    public IReadOnlyList<string> StopStrings => Template.StopStrings;

    /// <summary>An empty conversation for <paramref name="template"/>.</summary>
    public ConversationBuilder(ConversationTemplate template)
    {
        Template = template ?? throw new ArgumentNullException(nameof(template));
    }

    /// <summary>A conversation using the named template (see <see cref="ConversationTemplates.Get"/>).</summary>
    public ConversationBuilder(string templateName) : this(ConversationTemplates.Get(templateName)) { }

    /// <summary>Adds a user turn with <paramref name="imageCount"/> images.</summary>
    public ConversationBuilder AddUser(string text, int imageCount = 0)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (imageCount < 0) throw new PromptException($"Image count must not be negative, got {imageCount}");
        if (_messages.Count > 0 && _messages[^1].Role == ConversationRole.User)
            throw new PromptException("Turns must alternate: a user turn cannot follow another user turn");
        int markers = LlavaTokenizer.CountImageMarkers(text);
        if (markers != 0 && markers != imageCount)
            throw new PromptException($"The user text has {markers} {LlavaTokenizer.ImageMarker} marker(s) but {imageCount} image(s) are attached");
        _messages.Add(new ConversationMessage(ConversationRole.User, text, imageCount));
        return this;
    }

    /// <summary>Adds an assistant turn (a previous answer).</summary>
    public ConversationBuilder AddAssistant(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (_messages.Count == 0 || _messages[^1].Role != ConversationRole.User)
            throw new PromptException("Turns must alternate: an assistant turn must follow a user turn");
        if (text.Contains(LlavaTokenizer.ImageMarker, StringComparison.Ordinal))
            throw new PromptException($"Assistant turns cannot carry images or {LlavaTokenizer.ImageMarker} markers");
        _messages.Add(new ConversationMessage(ConversationRole.Assistant, text));
        return this;
    }

    /// <summary>Adds a turn of either role.</summary>
    public ConversationBuilder Add(ConversationMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        if (message.Role == ConversationRole.Assistant && message.ImageCount != 0)
            throw new PromptException("Assistant turns cannot carry images");
        return message.Role == ConversationRole.User ? AddUser(message.Text, message.ImageCount) : AddAssistant(message.Text);
    }

    /// <summary>
    /// The prompt text. When the last turn is the user's, the assistant's opening ("ASSISTANT:") is appended so the
    /// model answers next; when it is the assistant's, the full conversation is rendered as for training.
    /// </summary>
    public string BuildPrompt()
    {
        if (_messages.Count == 0) throw new PromptException("The conversation has no messages");
        string system = SystemPrompt ?? Template.SystemPrompt;
        var turns = _messages.Select(m => m.Role == ConversationRole.User ? PlaceImages(m) : m.Text).ToList();
        bool open = _messages[^1].Role == ConversationRole.User;
        var t = Template;
        var sb = new StringBuilder();
        switch (t.Style)
        {
            case SeparatorStyle.Single:
            case SeparatorStyle.Two:
                sb.Append(system).Append(t.Separator);
                for (int i = 0; i < turns.Count; i++)
                {
                    string sep = t.Style == SeparatorStyle.Two && i % 2 == 1 ? t.Separator2 ?? t.Separator : t.Separator;
                    sb.Append(Role(i)).Append(": ").Append(turns[i]).Append(sep);
                }
                if (open) sb.Append(t.AssistantRole).Append(':');
                break;

            case SeparatorStyle.Llama2:
                for (int i = 0; i < turns.Count; i++)
                {
                    if (i % 2 == 0)
                    {
                        string msg = i == 0 ? $"<<SYS>>\n{system}\n<</SYS>>\n\n{turns[i]}" : turns[i];
                        // LLaVA joins turns with "<s>" and strips it from the very start.
                        if (i > 0) sb.Append(t.Separator);
                        sb.Append("[INST] ").Append(msg).Append(" [/INST]");
                    }
                    else sb.Append(' ').Append(turns[i]).Append(' ').Append(t.Separator2);
                }
                break;

            case SeparatorStyle.Plain:
                sb.Append(system);
                for (int i = 0; i < turns.Count; i++)
                    sb.Append(turns[i]).Append(i % 2 == 1 ? t.Separator : "");
                break;

            case SeparatorStyle.LlavaHf:
                // Mirrors chat_template.jinja: "ROLE: " + one "<image>\n" per image + text + " "; system text has no role.
                if (system.Length > 0) sb.Append(system).Append(' ');
                for (int i = 0; i < turns.Count; i++)
                    sb.Append(Role(i)).Append(": ").Append(turns[i]).Append(' ');
                if (open) sb.Append(t.AssistantRole).Append(':');
                break;

            case SeparatorStyle.Raw:
                sb.Append(system);
                foreach (var turn in turns) sb.Append(turn);
                break;

            default:
                throw new PromptException($"Unsupported separator style {t.Style}");
        }
        return sb.ToString();
    }

    private string Role(int index) => index % 2 == 0 ? Template.UserRole : Template.AssistantRole;

    /// <summary>
    /// LLaVA's placement: markers in the text are removed, the rest trimmed, and one "&lt;image&gt;\n" per image put in
    /// front. Plain (stage-1 pretraining) keeps only the markers, as LLaVA's preprocess_plain drops the user text.
    /// Raw keeps markers written in the text where they are.
    /// </summary>
    private string PlaceImages(ConversationMessage m)
    {
        if (m.ImageCount == 0) return m.Text;
        string marker = LlavaTokenizer.ImageMarker;
        if (Template.Style == SeparatorStyle.Plain) return string.Concat(Enumerable.Repeat(marker, m.ImageCount));
        if (Template.Style == SeparatorStyle.Raw && LlavaTokenizer.CountImageMarkers(m.Text) == m.ImageCount) return m.Text;
        string rest = m.Text.Replace(marker, "", StringComparison.Ordinal).Trim();
        return string.Concat(Enumerable.Repeat(marker + "\n", m.ImageCount)) + rest;
    }
}
