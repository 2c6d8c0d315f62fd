namespace ShareGPT4V.Conversation;

/// <summary>The known conversation templates, looked up by name (case-insensitive).</summary>
public static class ConversationTemplates
{
    private const string UserSystem =
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions.";
    private const string HumanSystem =
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the human's questions.";
    private const string LlavaLlama2System =
        "You are a helpful language and vision assistant. You are able to understand the visual content that the user provides, and assist the user with a variety of tasks using natural language.";

    /// <summary>LLaVA conv_vicuna_v1: what LLaVA-1.5 and ShareGPT4V were fine-tuned with and what their eval scripts use.</summary>
    public static ConversationTemplate VicunaV1 { get; } =
        new("vicuna_v1", UserSystem, "USER", "ASSISTANT", SeparatorStyle.Two, " ", "</s>", ["</s>"]);

    /// <summary>LLaVA conv_llava_v1: vicuna_v1 with the "curious human" system message (LLaVA CLI default for v1 models).</summary>
    public static ConversationTemplate LlavaV1 { get; } = VicunaV1 with { Name = "llava_v1", SystemPrompt = HumanSystem };

    /// <summary>ShareGPT4V's share4v_v1 (Q-Bench): identical to llava_v1.</summary>
    public static ConversationTemplate Share4VV1 { get; } = LlavaV1 with { Name = "share4v_v1" };

    /// <summary>ShareGPT4V's share4v_v0: <c>{sys}###Human: &lt;image&gt;\n{q}###Assistant:</c>. Not what the released models were tuned on.</summary>
    public static ConversationTemplate Share4VV0 { get; } =
        new("share4v_v0", HumanSystem, "Human", "Assistant", SeparatorStyle.Single, "###", null, ["###"]);

    /// <summary>LLaVA conv_llava_llama_2 (LLaMA-2-chat based LLaVA models).</summary>
    public static ConversationTemplate LlavaLlama2 { get; } =
        new("llava_llama_2", LlavaLlama2System, "USER", "ASSISTANT", SeparatorStyle.Llama2, "<s>", "</s>", ["</s>"]);

    /// <summary>LLaVA conv_llava_plain (stage-1 pretraining): <c>&lt;image&gt;{caption}\n</c>.</summary>
    public static ConversationTemplate Plain { get; } =
        new("plain", "", "", "", SeparatorStyle.Plain, "\n", null, ["\n"]);

    /// <summary>The chat template shipped with llava-hf/llava-1.5-*-hf.</summary>
    public static ConversationTemplate LlavaHf { get; } =
        new("llava_hf", "", "USER", "ASSISTANT", SeparatorStyle.LlavaHf, " ", null, ["</s>"]);

    /// <summary>No template: the text is the prompt.</summary>
    public static ConversationTemplate Raw { get; } =
        new("raw", "", "", "", SeparatorStyle.Raw, "", null, []);

    private static readonly ConversationTemplate[] s_all = [VicunaV1, LlavaV1, Share4VV1, Share4VV0, LlavaLlama2, Plain, LlavaHf, Raw];
    private static readonly Dictionary<string, ConversationTemplate> s_byName =
        s_all.ToDictionary(t => t.Name, StringComparer.OrdinalIgnoreCase);

    /// <summary>All registered templates.</summary>
    public static IReadOnlyList<ConversationTemplate> All { get; } = Array.AsReadOnly(s_all);

    /// <summary>Names of all registered templates.</summary>
    public static IReadOnlyList<string> Names { get; } = Array.AsReadOnly(s_all.Select(t => t.Name).ToArray());

    /// <summary>The template of that name (case-insensitive); an unknown name raises a <see cref="PromptException"/> listing the known ones.</summary>
    public static ConversationTemplate Get(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (s_byName.TryGetValue(name.Trim(), out var t)) return t;
        throw new PromptException($"Unknown conversation template '{name}'. Known templates: {string.Join(", ", Names)}");
    }

    /// <summary>Looks a template up without throwing.</summary>
    public static bool TryGet(string name, out ConversationTemplate template) =>
        s_byName.TryGetValue(name?.Trim() ?? "", out template!);

    /// <summary>
    /// The default template for a model, from simple hints of its config: a llava-hf layout uses the llava-hf chat
    /// template; an original LLaVA / ShareGPT4V checkpoint (model_type share4v or llava with mm_* keys) uses llava_v1,
    /// or llava_llama_2 when its name says it is built on LLaMA-2-chat. Deliberately not LLaVA's name heuristic,
    /// which picks share4v_v0 for "ShareGPT4V-7B" because the name lacks "v1".
    /// </summary>
    /// <param name="modelType">config.json model_type (e.g. "share4v", "llava", "llama"), may be null.</param>
    /// <param name="isLlavaHfLayout">True for LlavaForConditionalGeneration checkpoints (vision_config/text_config).</param>
    /// <param name="modelName">Folder or hub name, may be null.</param>
    /// <param name="configured">The template the config names (<c>sharegpt4v_conv_mode</c>, written by conversion and
    /// training); wins when it is a known template.</param>
    public static ConversationTemplate ChooseDefault(string? modelType, bool isLlavaHfLayout, string? modelName, string? configured = null)
    {
        if (configured is not null && TryGet(configured, out var named)) return named;
        if (isLlavaHfLayout) return LlavaHf;
        string name = (modelName ?? "").ToLowerInvariant();
        if ((name.Contains("llama-2") || name.Contains("llama_2") || name.Contains("llama2")) && !name.Contains("vicuna"))
            return LlavaLlama2;
        // share4v / llava (and anything else Vicuna-based): the v1 format the models were tuned on.
        _ = modelType;
        return LlavaV1;
    }
}
