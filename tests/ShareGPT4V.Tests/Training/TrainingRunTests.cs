using System.Diagnostics;
using System.Text.Json;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Training;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;

namespace ShareGPT4V.Tests.Training;

/// <summary>
/// Whole training runs against the oracle's 3-step goldens (transformers Trainer 4.45: AdamW, cosine schedule with
/// warmup, gradient accumulation 2, clipping at 1), through <c>sharegpt4v train</c> as a user runs it, and through
/// the library with cancellation and resumption.
/// </summary>
public sealed class TrainingRunTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-train-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string DataFile(TrainingGolden g)
    {
        var path = Path.Combine(_dir, g.Stage + ".json");
        File.WriteAllText(path, g.DataJson());
        return path;
    }

    private static (int Code, string Out, string Err) Cli(params string[] args)
    {
        using var p = Process.Start(Samples.CliProcess.StartInfo(args))!;
        var so = p.StandardOutput.ReadToEndAsync();
        var se = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(180_000)) { p.Kill(true); Assert.Fail("train did not finish within 3 minutes"); }
        return (p.ExitCode, so.Result, se.Result);
    }

    /// <summary>The golden run's hyperparameters as the CLI's options.</summary>
    private string[] GoldenArgs(TrainingGolden g, string outDir, params string[] extra)
    {
        var args = new List<string>
        {
            "train", "--model", TrainingGolden.ModelDir, "--data", DataFile(g), "--image-folder", TrainingGolden.ModelDir,
            "--output", outDir, "--stage", g.Stage, "--learning-rate", "1e-3", "--per-device-batch-size", "1",
            "--gradient-accumulation-steps", "2", "--max-steps", "3", "--lr-scheduler", "cosine", "--warmup-ratio", "0.03",
            "--weight-decay", "0", "--max-grad-norm", "1.0", "--seed", "42", "--no-shuffle", "--dtype", "fp32",
        };
        if (g.Stage == "pretrain") args.AddRange(new[] { "--tune-vit-from-layer", "1" });
        args.AddRange(extra);
        return args.ToArray();
    }

    [Theory]
    [InlineData("finetune")]
    [InlineData("pretrain")]
    public void ThreeStepsThroughTheCliMatchTransformersTrainer(string stage)
    {
        var g = new TrainingGolden(stage);
        var outDir = Path.Combine(_dir, "out-" + stage);
        var run = Cli(GoldenArgs(g, outDir));
        Assert.True(run.Code == 0, run.Err);
        CheckAgainstGolden(g, outDir);
    }

    private void CheckAgainstGolden(TrainingGolden g, string outDir)
    {
        var training = g.Golden.GetProperty("training");
        var steps = training.GetProperty("steps").EnumerateArray().ToList();

        // trainer_state.json: Trainer's log_history (loss = mean of the step's micro-batch losses, lr after the scheduler step).
        var state = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(outDir, "trainer_state.json"))).RootElement;
        var history = state.GetProperty("log_history").EnumerateArray().ToList();
        Assert.Equal(3, history.Count);
        double[] loggedLr = { 1e-3, 5e-4, 0 };
        double worstLoss = 0, worstNorm = 0;
        for (int k = 0; k < 3; k++)
        {
            Assert.Equal(k + 1, history[k].GetProperty("step").GetInt32());
            double loss = history[k].GetProperty("loss").GetDouble();
            double golden = steps[k].GetProperty("mean_micro_batch_loss").GetDouble();
            worstLoss = Math.Max(worstLoss, Math.Abs(loss - golden) / golden);
            Assert.True(Math.Abs(loss - golden) <= 1e-6 * golden, $"step {k + 1} loss {loss} vs {golden}");
            double norm = history[k].GetProperty("grad_norm").GetDouble();
            double gnorm = steps[k].GetProperty("grad_total_l2_before_clip").GetDouble();
            worstNorm = Math.Max(worstNorm, Math.Abs(norm - gnorm) / gnorm);
            Assert.True(Math.Abs(norm - gnorm) <= 1e-4 * gnorm, $"step {k + 1} grad norm {norm} vs {gnorm}");
            Assert.Equal(loggedLr[k], history[k].GetProperty("learning_rate").GetDouble(), 12);
        }

        // Weights after step 3, every trainable parameter's norm, and the projector's AdamW moments.
        var tensors = g.Tensors();
        using var model = SafeTensorsFile.Open(Path.Combine(outDir, "model.safetensors"));
        using var optim = SafeTensorsFile.Open(Path.Combine(outDir, "optimizer.safetensors"));
        double worstWeight = 0, worstMoment = 0;
        foreach (var (key, expected) in tensors.Where(kv => kv.Key.StartsWith("step3.", StringComparison.Ordinal)))
        {
            var name = key["step3.".Length..];
            bool moment = name.StartsWith("exp_avg", StringComparison.Ordinal);
            using var t = moment ? optim.Load(name, torch.ScalarType.Float32) : model.Load(name, torch.ScalarType.Float32);
            var ours = t.contiguous().data<float>().ToArray();
            float diff = ours.Zip(expected, (a, b) => Math.Abs(a - b)).Max();
            float scale = expected.Max(Math.Abs);
            output.WriteLine($"{g.Stage}: {key} max abs diff {diff:E2} (max {scale:E2})");
            if (moment)
            {
                worstMoment = Math.Max(worstMoment, diff / scale);
                Assert.True(diff <= 2e-4 * scale, $"{key}: {diff} > 2e-4 x {scale}");
            }
            else
            {
                worstWeight = Math.Max(worstWeight, diff);
                Assert.True(diff <= 2e-5, $"{key}: max abs diff {diff} > 2e-5");
            }
        }
        double worstL2 = 0;
        foreach (var p in training.GetProperty("param_l2").GetProperty("after_step_3").EnumerateObject())
        {
            using var t = model.Load(p.Name, torch.ScalarType.Float64);
            double ours = t.norm().item<double>();
            double rel = Math.Abs(ours - p.Value.GetDouble()) / p.Value.GetDouble();
            worstL2 = Math.Max(worstL2, rel);
            Assert.True(rel <= 3e-5, $"{p.Name}: L2 after step 3 {ours} vs {p.Value.GetDouble()}");
        }
        // Frozen tensors are written back untouched (and trainable ones that never got a gradient stay bit-identical).
        using var initial = SafeTensorsFile.Open(Path.Combine(TrainingGolden.ModelDir, "model.safetensors"));
        var moved = training.GetProperty("param_l2").GetProperty("after_step_3").EnumerateObject().Select(p => p.Name).ToHashSet();
        foreach (var name in initial.Names.Where(n => !moved.Contains(n)))
        {
            using var a = initial.Load(name);
            using var b = model.Load(name);
            Assert.True(a.bytes.SequenceEqual(b.bytes), $"{name} changed but should not have");
        }
        output.WriteLine($"{g.Stage}: largest differences: loss {worstLoss:E2} rel, grad norm {worstNorm:E2} rel, step-3 weights {worstWeight:E2} abs, " +
            $"AdamW moments {worstMoment:E2} of max, param L2 {worstL2:E2} rel");
    }

    [Fact]
    public async Task Bf16AutocastTracksTheFloat32GoldenWithinBf16Precision()
    {
        // The bfloat16 path on any CPU (where it has no bf16 instructions this is slow, but the tiny model is small).
        var g = new TrainingGolden("finetune");
        var outDir = Path.Combine(_dir, "bf16");
        bool? saved = ShareGPT4V.Modeling.Autocast.ForceCpuBf16;
        ShareGPT4V.Modeling.Autocast.ForceCpuBf16 = true;
        try
        {
            await new Trainer(new TrainerOptions
            {
                ModelPath = TrainingGolden.ModelDir, DataPath = DataFile(g), ImageFolder = TrainingGolden.ModelDir, OutputDir = outDir,
                Stage = TrainingStage.Finetune, LearningRate = 1e-3, GradientAccumulationSteps = 2, MaxSteps = 3, WarmupRatio = 0.03,
                Shuffle = false, SaveSteps = 0, DType = "bf16",
            }).RunAsync();
        }
        finally { ShareGPT4V.Modeling.Autocast.ForceCpuBf16 = saved; }
        var steps = g.Golden.GetProperty("training").GetProperty("steps").EnumerateArray().ToList();
        var history = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(outDir, "trainer_state.json"))).RootElement.GetProperty("log_history").EnumerateArray().ToList();
        double worst = 0;
        for (int k = 0; k < 3; k++)
        {
            double loss = history[k].GetProperty("loss").GetDouble(), golden = steps[k].GetProperty("mean_micro_batch_loss").GetDouble();
            double rel = Math.Abs(loss - golden) / golden;
            worst = Math.Max(worst, rel);
            Assert.True(rel <= 1e-2, $"step {k + 1}: bf16 loss {loss} vs float32 golden {golden}");
        }
        output.WriteLine($"bf16 losses: largest relative difference from the float32 golden {worst:E2}");
        Assert.True(worst > 1e-6, "the bf16 run equals float32 to 1e-6: the products did not run in bfloat16");
        // The weights stay float32 (master weights) and move as the float32 run's do, to bf16 precision.
        using var model = SafeTensorsFile.Open(Path.Combine(outDir, "model.safetensors"));
        foreach (var (key, expected) in g.Tensors().Where(kv => kv.Key.StartsWith("step3.", StringComparison.Ordinal) && !kv.Key.Contains("exp_avg")))
        {
            using var t = model.Load(key["step3.".Length..]);
            Assert.Equal(torch.ScalarType.Float32, t.dtype);
            float diff = t.contiguous().data<float>().ToArray().Zip(expected, (a, b) => Math.Abs(a - b)).Max();
            Assert.True(diff <= 2e-2 * Math.Max(1f, expected.Max(Math.Abs)), $"{key}: max abs diff {diff} from the float32 golden");
        }
    }

    [Fact]
    public async Task CancelledAndResumedEqualsUninterruptedBitForBit()
    {
        var g = new TrainingGolden("finetune");
        var data = DataFile(g);
        TrainerOptions Options(string outDir) => new()
        {
            ModelPath = TrainingGolden.ModelDir, DataPath = data, ImageFolder = TrainingGolden.ModelDir, OutputDir = outDir,
            Stage = TrainingStage.Finetune, LearningRate = 1e-3, GradientAccumulationSteps = 2, MaxSteps = 3, WarmupRatio = 0.03,
            Shuffle = false, SaveSteps = 0,
        };
        var straight = Path.Combine(_dir, "straight");
        await new Trainer(Options(straight)).RunAsync();

        var resumed = Path.Combine(_dir, "resumed");
        using (var cts = new CancellationTokenSource())
        {
            var progress = new Inline<TrainingStepLog>(e => { if (e.Step == 2) cts.Cancel(); });
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => new Trainer(Options(resumed)).RunAsync(progress, cts.Token));
        }
        Assert.True(File.Exists(Path.Combine(resumed, "checkpoint-2", "trainer_state.json")), "cancelling saves a checkpoint");
        var result = await new Trainer(Options(resumed) with { Resume = true }).RunAsync();
        Assert.Equal(3, result.Steps);
        Assert.Equal(3, result.Log.Count);
        Assert.Equal(File.ReadAllBytes(Path.Combine(straight, "model.safetensors")), File.ReadAllBytes(Path.Combine(resumed, "model.safetensors")));
        Assert.Equal(File.ReadAllBytes(Path.Combine(straight, "optimizer.safetensors")), File.ReadAllBytes(Path.Combine(resumed, "optimizer.safetensors")));
    }

    [Fact]
    public void LoraTrainsSavesInPeftFormatAndMergesToTheSameOutputs()
    {
        var g = new TrainingGolden("finetune");
        var outDir = Path.Combine(_dir, "lora");
        var run = Cli("train", "--model", TrainingGolden.ModelDir, "--data", DataFile(g), "--image-folder", TrainingGolden.ModelDir,
            "--output", outDir, "--stage", "finetune", "--learning-rate", "1e-2", "--per-device-batch-size", "2", "--max-steps", "2",
            "--lr-scheduler", "constant", "--no-shuffle", "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0",
            "--report-to", "tensorboard");
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains(Directory.GetFiles(Path.Combine(outDir, "runs")), f => Path.GetFileName(f).StartsWith("events.out.tfevents.", StringComparison.Ordinal) && new FileInfo(f).Length > 100);
        var config = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(outDir, "adapter_config.json"))).RootElement;
        Assert.Equal("LORA", config.GetProperty("peft_type").GetString());
        Assert.Equal(4, config.GetProperty("r").GetInt32());
        Assert.Equal(8, config.GetProperty("lora_alpha").GetDouble());
        using (var adapter = SafeTensorsFile.Open(Path.Combine(outDir, "adapter_model.safetensors")))
        {
            Assert.Equal(7 * 2, adapter.Names.Count); // q, k, v, o, gate, up, down of the one layer, A and B each
            Assert.Contains("base_model.model.language_model.model.layers.0.self_attn.q_proj.lora_A.weight", adapter.Names);
            Assert.Equal(new long[] { 4, 32 }, adapter.GetInfo("base_model.model.language_model.model.layers.0.mlp.up_proj.lora_A.weight").Shape);
            Assert.Equal(new long[] { 64, 4 }, adapter.GetInfo("base_model.model.language_model.model.layers.0.mlp.up_proj.lora_B.weight").Shape);
        }
        var merged = Path.Combine(_dir, "merged");
        var m = Cli("merge-lora", "--model", TrainingGolden.ModelDir, "--adapter", outDir, "--output", merged);
        Assert.True(m.Code == 0, m.Err);

        float[] Logits(LlavaModel model)
        {
            using var batch = TrainingParityTests.Batch(g, new[] { 0, 1 });
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            var lm = model.LanguageModel;
            var ex = batch.Examples[1];
            var features = model.Projector.forward(model.ImageFeatures(batch.Pixels!.narrow(0, 1, 1)));
            int at = Array.IndexOf(ex.InputIds, TokenizedExample.ImageToken);
            var before = lm.Embed(torch.tensor(ex.InputIds[..at]).unsqueeze(0));
            var after = lm.Embed(torch.tensor(ex.InputIds[(at + 1)..]).unsqueeze(0));
            var emb = torch.cat(new[] { before, features, after }, 1);
            var pos = torch.arange(emb.shape[1]).unsqueeze(0);
            return lm.Forward(emb, pos, null, null, 0, ShareGPT4V.Language.LogitsMode.All).contiguous().data<float>().ToArray();
        }
        var folder = Configuration.ModelFolder.Open(TrainingGolden.ModelDir);
        float[] baseLogits, unmerged, mergedLogits;
        using (var model = ModelLoader.Load(TrainingGolden.ModelDir))
        {
            baseLogits = Logits(model);
            using var lora = LoraAdapters.Load(outDir, model, folder);
            unmerged = Logits(model);
        }
        using (var model = ModelLoader.Load(merged)) mergedLogits = Logits(model);
        double moved = baseLogits.Zip(unmerged, (a, b) => Math.Abs(a - b)).Max();
        double diff = unmerged.Zip(mergedLogits, (a, b) => Math.Abs(a - b)).Max();
        output.WriteLine($"LoRA: logits moved by up to {moved:E2} from the base; merged vs unmerged max abs diff {diff:E2}");
        Assert.True(moved > 1e-3, "the adapter should change the outputs");
        Assert.True(diff <= 1e-5, $"merged logits differ from the unmerged ones by {diff}");
    }

    private sealed class Inline<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
