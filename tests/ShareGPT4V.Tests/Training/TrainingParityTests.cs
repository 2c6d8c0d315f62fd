using System.Text.Json;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Preprocessing;
using ShareGPT4V.Training;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Training;

/// <summary>
/// The training forward/backward against transformers' (the oracle's training goldens): the batch loss, every trainable
/// parameter's gradient norm, the full gradients listed there, with the tolerances the oracle's README suggests.
/// </summary>
public sealed class TrainingParityTests(ITestOutputHelper output)
{
    internal static TrainingBatch Batch(TrainingGolden g, IEnumerable<int> which)
    {
        var pre = new TrainingPreprocessor(TrainingGolden.Tokenizer(), g.Template, TokenizerVariant.Llava, 2048);
        var processor = ClipImageProcessor.FromFile(Path.Combine(TrainingGolden.ModelDir, "preprocessor_config.json"),
            g.Stage == "finetune" ? ImageAspectMode.Pad : ImageAspectMode.Resize);
        var examples = new List<TokenizedExample>();
        var images = new List<PreprocessedImage>();
        foreach (int i in which)
        {
            var r = g.Record(i);
            examples.Add(pre.Process(r).Example);
            images.AddRange(r.Images.Select(p => processor.Preprocess(Path.Combine(TrainingGolden.ModelDir, p))));
        }
        return new TrainingBatch { Examples = examples, Pixels = PreprocessedImage.Stack(images) };
    }

    [Theory]
    [InlineData("finetune")]
    [InlineData("pretrain")]
    public void LossAndGradientsMatchTransformers(string stage)
    {
        var g = new TrainingGolden(stage);
        var fb = g.Golden.GetProperty("forward_backward");
        using var model = ModelLoader.Load(TrainingGolden.ModelDir);
        var trainableNames = g.Golden.GetProperty("trainable").GetProperty("parameters").EnumerateArray().Select(e => e.GetString()!).ToHashSet();
        var parameters = model.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter);
        foreach (var n in trainableNames) parameters[n].requires_grad_(true);
        try
        {
            using var batch = Batch(g, new[] { 0, 1 });
            var (loss, supervised, _) = TrainingForward.Loss(model, batch, 2048);
            using (loss)
            {
                Assert.Equal(fb.GetProperty("n_supervised_tokens").GetInt64(), supervised);
                double l = loss.item<float>();
                double goldenLoss = fb.GetProperty("loss").GetDouble();
                output.WriteLine($"{stage}: loss {l:R} vs {goldenLoss:R} (rel {Math.Abs(l - goldenLoss) / goldenLoss:E2})");
                Assert.True(Math.Abs(l - goldenLoss) <= 1e-6 * goldenLoss, $"loss {l} vs {goldenLoss}");
                loss.backward();
            }

            double worstRel = 0;
            string worst = "";
            foreach (var p in fb.GetProperty("grads").EnumerateObject())
            {
                using var grad = parameters[p.Name].grad;
                if (p.Value.ValueKind == JsonValueKind.Null)
                {
                    Assert.True(grad is null, $"{p.Name} should get no gradient");
                    continue;
                }
                Assert.NotNull(grad);
                double gl2 = p.Value.GetProperty("l2").GetDouble();
                double ours = grad!.to(ScalarType.Float64).norm().item<double>();
                bool structural = p.Name.EndsWith("k_proj.bias", StringComparison.Ordinal) && p.Name.StartsWith("vision_tower", StringComparison.Ordinal);
                if (structural) { Assert.True(ours < 1e-9, $"{p.Name}: {ours}"); continue; }
                double rel = Math.Abs(ours - gl2) / gl2;
                if (rel > worstRel) (worstRel, worst) = (rel, p.Name);
                Assert.True(rel <= 1e-5, $"{p.Name}: grad L2 {ours} vs {gl2} (rel {rel:E2})");
            }
            output.WriteLine($"{stage}: largest relative grad L2 difference {worstRel:E2} ({worst})");

            var tensors = g.Tensors();
            foreach (var (key, expected) in tensors.Where(kv => kv.Key.StartsWith("grad.", StringComparison.Ordinal)))
            {
                using var grad = parameters[key["grad.".Length..]].grad!;
                var ours = grad.contiguous().data<float>().ToArray();
                float maxAbs = expected.Max(Math.Abs);
                float diff = ours.Zip(expected, (a, b) => Math.Abs(a - b)).Max();
                output.WriteLine($"{stage}: {key} max abs diff {diff:E2} (max |g| {maxAbs:E2})");
                Assert.True(diff <= 2e-5 * maxAbs, $"{key}: max abs diff {diff} > 2e-5 x {maxAbs}");
            }
        }
        finally
        {
            foreach (var n in trainableNames) parameters[n].requires_grad_(false);
        }
    }

    [Theory]
    [InlineData("finetune")]
    [InlineData("pretrain")]
    public void GradientCheckpointingGivesTheSameGradients(string stage)
    {
        var g = new TrainingGolden(stage);
        using var model = ModelLoader.Load(TrainingGolden.ModelDir);
        var trainable = g.Golden.GetProperty("trainable").GetProperty("parameters").EnumerateArray().Select(e => e.GetString()!).ToList();
        var parameters = model.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter);
        foreach (var n in trainable) parameters[n].requires_grad_(true);
        try
        {
            Dictionary<string, float[]> Grads(bool checkpointing)
            {
                using var batch = Batch(g, new[] { 0, 1 });
                TrainingForward.ForwardBackward(model, batch, 2048, 2, checkpointing);
                var result = new Dictionary<string, float[]>();
                foreach (var n in trainable)
                {
                    using var grad = parameters[n].grad;
                    if (grad is null) continue;
                    result[n] = grad.contiguous().data<float>().ToArray();
                    grad.zero_();
                }
                return result;
            }
            var plain = Grads(false);
            var checkpointed = Grads(true);
            Assert.Equal(plain.Keys.OrderBy(k => k), checkpointed.Keys.OrderBy(k => k));
            double worst = 0;
            foreach (var (name, a) in plain)
            {
                var b = checkpointed[name];
                float scale = Math.Max(a.Max(Math.Abs), 1e-30f);
                double diff = a.Zip(b, (x, y) => Math.Abs(x - y)).Max() / scale;
                worst = Math.Max(worst, diff);
            }
            output.WriteLine($"{stage}: gradient checkpointing, largest gradient difference {worst:E2} of the tensor's max");
            Assert.True(worst <= 1e-6, $"checkpointed gradients differ by {worst} of max");
        }
        finally
        {
            foreach (var n in trainable) parameters[n].requires_grad_(false);
        }
    }

    [Fact]
    public void WeightDecaySkipsBiasesAndNormsAsTransformers445()
    {
        using var model = ModelLoader.Load(TrainingGolden.ModelDir);
        var noDecay = Trainer.NoDecayNames(model);
        foreach (var n in new[]
        {
            "language_model.model.layers.0.input_layernorm.weight", "language_model.model.layers.0.post_attention_layernorm.weight",
            "language_model.model.norm.weight", "vision_tower.vision_model.pre_layrnorm.weight", "vision_tower.vision_model.post_layernorm.bias",
            "vision_tower.vision_model.encoder.layers.1.layer_norm1.weight", "vision_tower.vision_model.encoder.layers.1.self_attn.q_proj.bias",
            "multi_modal_projector.linear_1.bias",
        })
            Assert.Contains(n, noDecay);
        foreach (var n in new[]
        {
            "language_model.model.embed_tokens.weight", "language_model.lm_head.weight", "language_model.model.layers.0.self_attn.q_proj.weight",
            "multi_modal_projector.linear_2.weight", "vision_tower.vision_model.embeddings.class_embedding",
            "vision_tower.vision_model.embeddings.position_embedding.weight", "vision_tower.vision_model.encoder.layers.1.mlp.fc1.weight",
        })
            Assert.DoesNotContain(n, noDecay);
    }
}
