using System.Text.Json;
using ShareGPT4V.Checkpoints;
using ShareGPT4V.Configuration;
using ShareGPT4V.Preprocessing;
using ShareGPT4V.Training;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using TorchSharp;
using Xunit;

namespace ShareGPT4V.Tests.Training;

/// <summary>
/// Training from scratch: random initialisation, the vision stage and the auxiliary patch loss. The patch labels are
/// checked against the image processor itself (transformers-exact): a patch is labelled where its preprocessed pixels
/// show the labelled shape.
/// </summary>
public sealed class AuxPatchTrainingTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-aux-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>A pale image with a red rectangle, and its label ids (1 on the rectangle).</summary>
    private static (RgbImage Image, byte[] Labels) Scene(int w, int h, int x0, int y0, int x1, int y1)
    {
        var px = new byte[w * h * 3];
        var ids = new byte[w * h];
        for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
        {
            bool on = x >= x0 && x < x1 && y >= y0 && y < y1;
            int i = (y * w + x) * 3;
            (px[i], px[i + 1], px[i + 2]) = on ? ((byte)220, (byte)20, (byte)20) : ((byte)235, (byte)235, (byte)235);
            ids[y * w + x] = on ? (byte)1 : (byte)0;
        }
        return (new RgbImage(w, h, px), ids);
    }

    [Theory]
    [InlineData(ImageAspectMode.Pad, 300, 150, 20, 30, 90, 100)]
    [InlineData(ImageAspectMode.Pad, 140, 280, 70, 200, 130, 270)]
    [InlineData(ImageAspectMode.Resize, 300, 150, 120, 40, 200, 110)]
    [InlineData(ImageAspectMode.Resize, 150, 300, 10, 100, 140, 180)]
    public void PatchLabelsFollowTheImageProcessorsGeometry(ImageAspectMode aspect, int w, int h, int x0, int y0, int x1, int y1)
    {
        const int size = 96, patch = 16, grid = size / patch;
        var processor = new ClipImageProcessor(new PreprocessorConfig { ShortestEdge = size, CropHeight = size, CropWidth = size }, aspect);
        var (image, ids) = Scene(w, h, x0, y0, x1, y1);
        var pre = processor.Preprocess(image);
        var labels = PatchLabelGrid.Compute(ids, w, h, aspect, size, patch, classes: 2, "scene.png", "r0");
        Assert.Equal(grid * grid, labels.Length);
        int labelled = 0;
        for (int r = 0; r < grid; r++)
        for (int c = 0; c < grid; c++)
        {
            // The share of the patch's preprocessed pixels that are red (resampling blurs the edges: clear cases only).
            int red = 0;
            for (int y = r * patch; y < (r + 1) * patch; y++)
            for (int x = c * patch; x < (c + 1) * patch; x++)
            {
                int i = (y * size + x) * 3;
                if (pre.CroppedRgb[i] > 180 && pre.CroppedRgb[i + 1] < 120) red++;
            }
            double share = red / (double)(patch * patch);
            long label = labels[r * grid + c];
            if (share >= 0.2) Assert.True(label == 1, $"patch ({r}, {c}) is {share:P0} red but labelled {label}");
            if (share == 0) Assert.True(label == 0, $"patch ({r}, {c}) shows no red but is labelled {label}");
            labelled += (int)label;
        }
        Assert.True(labelled > 0);
    }

    [Fact]
    public void ALabelOutsideTheClassesOrOfAnotherSizeNamesTheRecord()
    {
        var (_, ids) = Scene(64, 64, 0, 0, 32, 32);
        ids[0] = 7;
        var e = Assert.Throws<TrainingDataException>(() => PatchLabelGrid.Compute(ids, 64, 64, ImageAspectMode.Pad, 32, 16, 4, "l.png", "rec-9"));
        Assert.Contains("rec-9", e.Message);
        Assert.Contains("class 7", e.Message);

        var path = Path.Combine(_dir, "small.png");
        using (var img = new Image<L8>(10, 10)) img.SaveAsPng(path);
        e = Assert.Throws<TrainingDataException>(() => PatchLabelGrid.Compute(path, 64, 64, ImageAspectMode.Pad, 32, 16, 4, "rec-3"));
        Assert.Contains("10x10", e.Message);
        Assert.Contains("rec-3", e.Message);
    }

    [Fact]
    public void ScratchWeightsAreSeededAndInitialisedAsTransformersDoes()
    {
        var a = new ScratchWeights(7);
        var b = new ScratchWeights(7);
        var c = new ScratchWeights(8);
        using var wa = a.Take("language_model.model.layers.0.mlp.up_proj.weight", new long[] { 256, 128 }, true);
        using var wb = b.Take("language_model.model.layers.0.mlp.up_proj.weight", new long[] { 256, 128 }, true);
        using var wc = c.Take("language_model.model.layers.0.mlp.up_proj.weight", new long[] { 256, 128 }, true);
        Assert.True(wa.equal(wb).all().item<bool>());
        Assert.False(wa.equal(wc).all().item<bool>());
        Assert.InRange(wa.std().item<float>(), 0.019, 0.021);
        using var norm = a.Take("vision_tower.vision_model.pre_layrnorm.weight", new long[] { 8 }, false);
        using var rms = a.Take("language_model.model.norm.weight", new long[] { 8 }, false);
        using var bias = a.Take("vision_tower.vision_model.encoder.layers.0.mlp.fc1.bias", new long[] { 8 }, false);
        Assert.True(norm.eq(1).all().item<bool>() && rms.eq(1).all().item<bool>() && bias.eq(0).all().item<bool>());
    }

    /// <summary>The oracle's tiny model with labelled copies of its image: left half class 1..3, right half background.</summary>
    private string Data(int records)
    {
        var src = Path.Combine(TrainingGolden.ModelDir, "image1.png");
        var info = Image.Identify(src);
        var recs = new List<object>();
        for (int i = 0; i < records; i++)
        {
            File.Copy(src, Path.Combine(_dir, $"img{i}.png"), overwrite: true);
            using (var lbl = new Image<L8>(info.Width, info.Height))
            {
                for (int y = 0; y < info.Height; y++)
                for (int x = 0; x < info.Width / 2; x++)
                    lbl[x, y] = new L8((byte)(i % 3 + 1));
                lbl.SaveAsPng(Path.Combine(_dir, $"lbl{i}.png"));
            }
            recs.Add(new
            {
                id = $"r{i}", image = $"img{i}.png", patch_labels = $"lbl{i}.png",
                conversations = new[] { new { from = "human", value = "<image>\nDescribe." }, new { from = "gpt", value = "A red circle in the top left." } },
            });
        }
        var path = Path.Combine(_dir, "data.json");
        File.WriteAllText(path, JsonSerializer.Serialize(recs));
        return path;
    }

    private TrainerOptions Options(string data, string output, TrainingStage stage) => new()
    {
        ModelPath = TrainingGolden.ModelDir, DataPath = data, OutputDir = output, Stage = stage, FromScratch = true,
        TuneVitEmbeddings = true, TuneVitFromLayer = 0, AuxPatchLossWeight = 0.5, AuxPatchClasses = 4, LearningRate = 3e-3,
        PerDeviceBatchSize = 2, Epochs = 4, Shuffle = false, LrScheduler = LrSchedulerKind.Constant, ImageAspect = ImageAspectMode.Pad,
    };

    [Fact]
    public async Task TheVisionStageLearnsThePatchLabelsAndTrainsOnlyTheTower()
    {
        var data = Data(4);
        var output = Path.Combine(_dir, "vision");
        var result = await new Trainer(Options(data, output, TrainingStage.Vision) with { LearningRate = 1e-2 }).RunAsync();
        Assert.Equal(8, result.Steps);
        Assert.True(result.Log[^1].AuxLoss < result.Log[0].AuxLoss * 0.7, $"aux loss {result.Log[0].AuxLoss} -> {result.Log[^1].AuxLoss}");

        // The written model is a plain LLaVA (the head is beside it, for resumption): it loads, its LLM and projector
        // are the untouched random initialisation, its tower moved away from it.
        Assert.True(File.Exists(Path.Combine(output, AuxPatchHead.FileName)));
        using var trained = ModelLoader.Load(output);
        using var init = new LlavaModel(ModelFolder.Open(TrainingGolden.ModelDir).Config, new ScratchWeights(42));
        var t = trained.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        var cfg = trained.Config;
        int usedLayers = cfg.Vision.NumHiddenLayers + 1 + cfg.VisionFeatureLayer; // layers after the one the projector reads get no gradient
        static int Layer(string n) => int.Parse(n.Split('.')[4]);
        foreach (var (name, p) in init.named_parameters())
        {
            bool same = t[name].equal(p).all().item<bool>();
            if (name.StartsWith("vision_tower.vision_model.encoder.", StringComparison.Ordinal) && Layer(name) >= usedLayers)
                Assert.True(same, name + " is after the feature layer but changed");
            else if (name.StartsWith("vision_tower.vision_model.encoder.", StringComparison.Ordinal) || name.StartsWith("vision_tower.vision_model.embeddings.", StringComparison.Ordinal)
                || name.StartsWith("vision_tower.vision_model.pre_layrnorm.", StringComparison.Ordinal))
                Assert.False(same, name + " did not train");
            else if (!name.Contains("post_layernorm", StringComparison.Ordinal))
                Assert.True(same, name + " changed in the vision stage");
        }
    }

    [Fact]
    public async Task PretrainWithTheAuxiliaryLossResumesBitForBit()
    {
        var data = Data(4);
        var straight = Path.Combine(_dir, "straight");
        var full = await new Trainer(Options(data, straight, TrainingStage.Pretrain) with { Epochs = 2 }).RunAsync();
        Assert.All(full.Log, e => Assert.True(double.IsFinite(e.AuxLoss)));

        var split = Path.Combine(_dir, "split");
        await new Trainer(Options(data, split, TrainingStage.Pretrain) with { Epochs = 2, SaveSteps = 2, MaxSteps = 2 }).RunAsync();
        // MaxSteps changes the schedule's length: resume the 4-step run from the 2-step checkpoint of a 4-step run instead.
        Directory.Delete(split, true);
        using var cts = new CancellationTokenSource();
        var progress = new SyncProgressForTests<TrainingStepLog>(e => { if (e.Step == 2) cts.Cancel(); });
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            new Trainer(Options(data, split, TrainingStage.Pretrain) with { Epochs = 2 }).RunAsync(progress, cts.Token));
        var resumed = await new Trainer(Options(data, split, TrainingStage.Pretrain) with { Epochs = 2, Resume = true }).RunAsync();
        Assert.Equal(full.Log.Select(e => (e.Loss, e.AuxLoss)), resumed.Log.Select(e => (e.Loss, e.AuxLoss)));
    }

    [Fact]
    public void OptionsThatCannotWorkTogetherNameTheOption()
    {
        var o = Options("d.json", "out", TrainingStage.Vision);
        Assert.Equal("aux-patch-loss-weight", Assert.Throws<ModelConfigurationException>(() => (o with { AuxPatchLossWeight = 0 }).Validate()).Key);
        Assert.Equal("aux-patch-classes", Assert.Throws<ModelConfigurationException>(() => (o with { AuxPatchClasses = 1 }).Validate()).Key);
        Assert.Equal("aux-patch-loss-weight", Assert.Throws<ModelConfigurationException>(() => (o with { Stage = TrainingStage.Finetune }).Validate()).Key);
        Assert.Equal("gradient-checkpointing", Assert.Throws<ModelConfigurationException>(() => (o with { Stage = TrainingStage.Pretrain, GradientCheckpointing = true }).Validate()).Key);
    }
}

/// <summary>Reports on the caller's thread (Progress&lt;T&gt; posts to the thread pool, too late to cancel at a given step).</summary>
internal sealed class SyncProgressForTests<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
