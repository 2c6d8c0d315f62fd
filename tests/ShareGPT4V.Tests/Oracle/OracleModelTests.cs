using ShareGPT4V.Checkpoints;
using ShareGPT4V.Generation;
using ShareGPT4V.Language;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Oracle;

/// <summary>
/// Every stage of the model against the goldens computed by Hugging Face transformers (float32, tolerance 1e-4):
/// CLIP hidden states, selected features, projector, logits rows, LLaMA hidden states, text-only and left-padded
/// batches, both placeholder conventions, and KV-cache greedy decoding.
/// </summary>
public class OracleModelTests
{
    private const double Tol = 1e-4;

    public static IEnumerable<object[]> Cases => new[]
    {
        new object[] { "hf_tiny" }, new object[] { "llava_tiny336" }, new object[] { "hf_llama2vocab" },
        // The same weights as llava_tiny336 saved as PyTorch .bin shards, as the hub checkpoints ship.
        new object[] { "llava_tiny336_bin" },
        // Converted into the other layout by ModelConverter.
        new object[] { "llava_tiny336_as_hf" }, new object[] { "hf_tiny_as_original" },
    };

    private static readonly Dictionary<string, LlavaModel> Models = new();

    internal static LlavaModel Model(GoldenCase c)
    {
        lock (Models)
        {
            if (!Models.TryGetValue(c.Name, out var m))
                Models[c.Name] = m = ModelLoader.Load(c.ModelPath);
            return m;
        }
    }

    [Theory, MemberData(nameof(Cases))]
    public void AllClipHiddenStatesMatch(string name)
    {
        var c = GoldenCase.Get(name);
        var model = Model(c);
        foreach (var key in c.TensorNames("vision_hidden_states_all.safetensors").Where(k => !k.Contains("pooler")))
        {
            using var scope = NewDisposeScope();
            var variant = key.Split('_', 2)[1];
            var pixels = c.Pixels(key.Split('_')[0], variant);
            var expected = c.Tensor("vision_hidden_states_all.safetensors", key); // [L+1, T, H]
            using var noGrad = torch.no_grad();
            var states = model.VisionTower.AllHiddenStates(pixels);
            Assert.Equal(expected.shape[0], states.Count);
            for (int i = 0; i < states.Count; i++)
                TensorAssert.Close(expected[i], states[i].squeeze(0), Tol, $"{name} clip hidden state {i} ({key})");
        }
    }

    [Theory, MemberData(nameof(Cases))]
    public void SelectedFeaturesAndProjectorMatch(string name)
    {
        var c = GoldenCase.Get(name);
        var model = Model(c);
        foreach (var key in c.TensorNames("vision_hidden_minus2.safetensors"))
        {
            using var scope = NewDisposeScope();
            using var noGrad = torch.no_grad();
            var parts = key.Split('_', 2);
            var pixels = c.Pixels(parts[0], parts[1]);
            var features = model.ImageFeatures(pixels).squeeze(0);
            TensorAssert.Close(c.Tensor("vision_hidden_minus2.safetensors", key), features, Tol, $"{name} features {key}");
            var projected = model.EncodeImages(pixels).squeeze(0);
            TensorAssert.Close(c.Tensor("projector_out.safetensors", key), projected, Tol, $"{name} projector {key}");
        }
    }

    [Theory, MemberData(nameof(Cases))]
    public void MainPromptLogitsAndHiddenStatesMatch(string name)
    {
        var c = GoldenCase.Get(name);
        var model = Model(c);
        var p = c.Prompt("main");
        var forms = new List<string> { "input_ids" };
        if (p.TryGetProperty("input_ids_expanded", out _)) forms.Add("input_ids_expanded");
        foreach (var form in forms)
        {
            using var scope = NewDisposeScope();
            using var noGrad = torch.no_grad();
            var ids = c.InputIds(p.GetProperty(form));
            var image = model.EncodeImages(c.Pixels(p.GetProperty("image").GetString()!, p.GetProperty("pixel_variant").GetString()!));
            using var inputs = model.BuildInputs(new[] { ids }, image);
            var hidden = new List<Tensor>();
            var logits = model.LanguageModel.Forward(inputs.Embeddings, inputs.PositionIds, null, null, 0, LogitsMode.All, hidden);
            var positions = GoldenCase.Ids(p.GetProperty("logits_positions"));
            var expectedRows = c.Tensor("logits.safetensors", "main_rows");
            for (int i = 0; i < positions.Length; i++)
                TensorAssert.Close(expectedRows[i], logits[0, positions[i]], Tol, $"{name} main logits row {positions[i]} ({form})");
            var expectedHidden = c.Tensor("logits.safetensors", "main_llm_hidden_last");
            Assert.Equal(expectedHidden.shape[0], hidden.Count);
            long last = inputs.Length - 1;
            for (int i = 0; i < hidden.Count; i++)
                TensorAssert.Close(expectedHidden[i], hidden[i][0, last], Tol, $"{name} llm hidden {i} ({form})");
        }
    }

    [Theory, MemberData(nameof(Cases))]
    public void TextOnlyLogitsMatch(string name)
    {
        var c = GoldenCase.Get(name);
        var model = Model(c);
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var ids = c.InputIds(c.Prompt("text").GetProperty("input_ids"));
        using var inputs = model.BuildInputs(new[] { ids }, null);
        var logits = model.LanguageModel.Forward(inputs.Embeddings, inputs.PositionIds, null, null, 0, LogitsMode.Last);
        TensorAssert.Close(c.Tensor("logits.safetensors", "text_last"), logits[0, 0], Tol, $"{name} text last logits");
    }

    [Theory, MemberData(nameof(Cases))]
    public void LeftPaddedBatchRowsMatch(string name)
    {
        var c = GoldenCase.Get(name);
        var model = Model(c);
        foreach (var batch in new[] { "batch_image", "batch_text" })
        {
            using var scope = NewDisposeScope();
            using var noGrad = torch.no_grad();
            var p = c.Prompt(batch);
            var rows = c.InputIdRows(p.GetProperty("input_ids"));
            Tensor? images = null;
            if (p.GetProperty("images").ValueKind == System.Text.Json.JsonValueKind.Array)
            {
                var variant = p.GetProperty("pixel_variant").GetString()!;
                var pix = torch.cat(p.GetProperty("images").EnumerateArray().Select(i => c.Pixels(i.GetString()!, variant)).ToArray(), 0);
                images = model.EncodeImages(pix);
            }
            using var inputs = model.BuildInputs(rows, images);
            var logits = model.LanguageModel.Forward(inputs.Embeddings, inputs.PositionIds, inputs.AttentionMask, null, 0, LogitsMode.Last);
            var expected = c.Tensor("logits.safetensors", p.GetProperty("logits_key").GetString()!);
            for (int r = 0; r < rows.Length; r++)
                TensorAssert.Close(expected[r], logits[r, 0], Tol, $"{name} {batch} row {r}");
        }
    }

    /// <summary>
    /// Greedy decoding through the generation engine users call (slots, prefill, batched decode steps), every row of a
    /// batch prompt in its own slot: the generated ids of transformers' generate() and, for the main prompt, the logits
    /// of every step.
    /// </summary>
    [Theory, MemberData(nameof(Cases))]
    public void GreedyDecodingWithKvCacheReproducesGeneratedIds(string name)
    {
        var c = GoldenCase.Get(name);
        var model = Model(c);
        int maxNew = c.Golden.GetProperty("max_new_tokens").GetInt32();
        using var engine = EngineFor(c, model, maxBatch: 4);
        foreach (var prompt in new[] { "main", "text", "batch_image", "batch_text" })
        {
            using var scope = NewDisposeScope();
            var p = c.Prompt(prompt);
            long[][] rows;
            var images = new List<Tensor>();
            string? variant = p.TryGetProperty("pixel_variant", out var v) ? v.GetString() : c.PrimaryVariant;
            if (p.TryGetProperty("texts", out _))
            {
                rows = c.InputIdRows(p.GetProperty("input_ids"));
                if (p.GetProperty("images").ValueKind == System.Text.Json.JsonValueKind.Array)
                    images.AddRange(p.GetProperty("images").EnumerateArray().Select(i => c.Pixels(i.GetString()!, variant!)));
            }
            else
            {
                rows = new[] { c.InputIds(p.GetProperty("input_ids")) };
                if (p.TryGetProperty("image", out var img)) images.Add(c.Pixels(img.GetString()!, variant!));
            }
            Tensor? stepGolden = prompt == "main" && c.HasTensor("logits.safetensors", "main_gen_step_logits")
                ? c.Tensor("logits.safetensors", "main_gen_step_logits") : null;
            var requests = EngineRequests(model, rows, images, maxNew, (row, step, logits) =>
            {
                if (stepGolden is not null && row == 0)
                    TensorAssert.Close(stepGolden[step], logits, Tol, $"{name} greedy step {step} logits");
            });
            var outputs = engine.Run(requests);
            var expected = p.GetProperty("generated_ids");
            var expectedRows = expected[0].ValueKind == System.Text.Json.JsonValueKind.Array ? GoldenCase.IdRows(expected) : new[] { GoldenCase.Ids(expected) };
            for (int r = 0; r < rows.Length; r++)
                Assert.Equal(expectedRows[r], outputs[r].TokenIds.Select(x => (long)x).ToArray());
            Assert.Equal(0, engine.ActiveCount);
        }
    }

    /// <summary>An engine over a golden case's model (ids only: the oracle folders carry no tokenizer), by default without caches.</summary>
    internal static GenerationEngine EngineFor(GoldenCase c, LlavaModel model, int maxBatch, long imageCacheBytes = 0, long prefixCacheBytes = 0) =>
        new(model, null, new EngineOptions
        {
            MaxBatchSize = maxBatch, ContextLength = model.Config.Text.MaxPositionEmbeddings,
            ImageCacheBytes = imageCacheBytes, PrefixCacheBytes = prefixCacheBytes,
        });

    /// <summary>
    /// One greedy, fixed-length request per row (the reference protocol: no early stop); images [1, 3, H, W] in order of
    /// their placeholders across the rows.
    /// </summary>
    internal static List<SequenceRequest> EngineRequests(LlavaModel model, long[][] rows, IReadOnlyList<Tensor> images, int maxNew,
        Action<int, int, Tensor>? onStepLogits = null)
    {
        var requests = new List<SequenceRequest>();
        int cursor = 0;
        for (int r = 0; r < rows.Length; r++)
        {
            int row = r;
            int count = model.CountImages(rows[r]);
            requests.Add(new SequenceRequest
            {
                PromptIds = rows[r].Select(x => (int)x).ToArray(),
                Images = images.Skip(cursor).Take(count).Select(t => new EngineImage(t)).ToList(),
                Options = new GenerationOptions { MaxNewTokens = maxNew, StopAtEndOfSequence = false },
                OnStepLogits = onStepLogits is null ? null : (step, logits) => onStepLogits(row, step, logits),
            });
            cursor += count;
        }
        return requests;
    }
}
