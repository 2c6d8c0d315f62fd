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
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        psi.Environment.Remove("SHAREGPT4V_LIBTORCH_DIR");
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "sharegpt4v.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
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

    private sealed class Inline<T>(Action<T> report) : IProgress<T>
    {
        public void Report(T value) => report(value);
    }
}
