using System.Text.Json;
using ShareGPT4V.Tokenization;

namespace ShareGPT4V.Tests.Tokenization;

/// <summary>
/// Tokenizers over the test fixtures, loaded once per test run. tokenizer.model variants are assembled in temp
/// folders from the genuine LLaMA-2 tokenizer.model plus the config files of a real checkpoint.
/// </summary>
internal static class TokenizerFixtures
{
    public static string ModelFile => Fixtures.Path("tokenizers/llama2/tokenizer.model");
    public static string JsonFolder => Fixtures.Path("oracle/hf_llama2vocab");

    private static readonly Lazy<LlavaTokenizer> s_json = new(() => LlavaTokenizer.Load(JsonFolder));
    private static readonly Lazy<LlavaTokenizer> s_spmLegacyFalse = new(() => LlavaTokenizer.Load(ModelFolder("anchors/liuhaotian__llava-v1.5-7b")));
    private static readonly Lazy<LlavaTokenizer> s_spmLegacyTrue = new(() => LlavaTokenizer.Load(ModelFolder("oracle/hf_llama2vocab", "tokenizer_config.json", "special_tokens_map.json")));
    private static readonly Lazy<LlavaTokenizer> s_spmHf = new(() => LlavaTokenizer.Load(ModelFolder("anchors/llava-hf__llava-1.5-7b-hf")));

    /// <summary>tokenizer.json of the hf_llama2vocab case (legacy true config, &lt;image&gt; 32000, &lt;pad&gt; 32001).</summary>
    public static LlavaTokenizer Json => s_json.Value;
    /// <summary>tokenizer.model with liuhaotian/llava-v1.5-7b's configs (legacy false, pad = unk).</summary>
    public static LlavaTokenizer SpmLegacyFalse => s_spmLegacyFalse.Value;
    /// <summary>tokenizer.model with the hf_llama2vocab configs (legacy true, &lt;image&gt; 32000).</summary>
    public static LlavaTokenizer SpmLegacyTrue => s_spmLegacyTrue.Value;
    /// <summary>tokenizer.model with llava-hf/llava-1.5-7b-hf's configs (legacy false, added_tokens.json).</summary>
    public static LlavaTokenizer SpmHf => s_spmHf.Value;

    public static LlavaTokenizer ByName(string name) => name switch
    {
        "json" => Json,
        "spm_legacy_false" => SpmLegacyFalse,
        "spm_legacy_true" => SpmLegacyTrue,
        "spm_hf" => SpmHf,
        _ => throw new ArgumentException(name),
    };

    public static readonly string[] AllNames = ["json", "spm_legacy_false", "spm_legacy_true", "spm_hf"];

    /// <summary>A fresh temp folder with tokenizer.model and the named config files of a fixture folder.</summary>
    public static string ModelFolder(string configFolder, params string[] files)
    {
        string dir = NewTempFolder();
        File.Copy(ModelFile, Path.Combine(dir, "tokenizer.model"));
        var source = Fixtures.Path(configFolder);
        var names = files.Length > 0 ? files : ["tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"];
        foreach (var f in names)
            if (File.Exists(Path.Combine(source, f))) File.Copy(Path.Combine(source, f), Path.Combine(dir, f));
        return dir;
    }

    private static readonly System.Collections.Concurrent.ConcurrentBag<string> s_tempFolders = [];

    static TokenizerFixtures()
    {
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            foreach (var dir in s_tempFolders)
                try { Directory.Delete(dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        };
    }

    /// <summary>A new empty folder, deleted when the test process exits.</summary>
    public static string NewTempFolder()
    {
        string dir = Path.Combine(Path.GetTempPath(), "sg4v-tok-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        s_tempFolders.Add(dir);
        return dir;
    }

    private static readonly Lazy<JsonElement> s_golden = new(() =>
        JsonDocument.Parse(File.ReadAllBytes(Fixtures.Path("oracle/hf_llama2vocab/golden.json"))).RootElement);

    public static JsonElement Golden => s_golden.Value;

    /// <summary>The four golden prompts: name → (text, LLaVA ids with -200).</summary>
    public static (string Text, int[] Ids) GoldenPrompt(string name)
    {
        var prompts = Golden.GetProperty("prompts");
        string text = name switch
        {
            "main" => prompts.GetProperty("main").GetProperty("text").GetString()!,
            "text" => prompts.GetProperty("text").GetProperty("text").GetString()!,
            "short_image" => prompts.GetProperty("batch_image").GetProperty("texts")[0].GetString()!,
            "text_short" => prompts.GetProperty("batch_text").GetProperty("texts")[0].GetString()!,
            _ => throw new ArgumentException(name),
        };
        var ids = Golden.GetProperty("tokenizer").GetProperty("per_prompt").GetProperty(name)
            .GetProperty("llava_tokenizer_image_token_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        return (text, ids);
    }

    public static readonly string[] GoldenPromptNames = ["main", "short_image", "text", "text_short"];

    public static JsonElement TrainingBatch(string stage) =>
        JsonDocument.Parse(File.ReadAllBytes(Fixtures.Path($"training/{stage}_batch.json"))).RootElement;

    public static int[] Ints(JsonElement array) => array.EnumerateArray().Select(e => e.GetInt32()).ToArray();
}
