using ShareGPT4V.Training;
using Xunit;

namespace ShareGPT4V.Tests.Training;

/// <summary>Bad training input: broken records and images, out-of-range options, a diverging run.</summary>
public sealed class TrainingInputTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-train-bad-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private TrainerOptions Options(string data, string outName) => new()
    {
        ModelPath = TrainingGolden.ModelDir, DataPath = data, ImageFolder = TrainingGolden.ModelDir,
        OutputDir = Path.Combine(_dir, outName), Stage = TrainingStage.Finetune, LearningRate = 1e-3, MaxSteps = 1, Shuffle = false,
    };

    private string Data(string json)
    {
        var path = Path.Combine(_dir, Guid.NewGuid().ToString("N") + ".json");
        File.WriteAllText(path, json);
        return path;
    }

    private const string Good = """{"id": "good", "image": "image2.png", "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]}""";
    private const string TextOnly = """{"id": "text", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}, {"from": "human", "value": "Again?"}, {"from": "gpt", "value": "Hi again."}]}""";
    private const string MissingImage = """{"id": "lost", "image": "nowhere.png", "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]}""";
    private const string EmptyConversation = """{"id": "empty", "conversations": []}""";
    private const string NoAnswer = """{"id": "unanswered", "conversations": [{"from": "human", "value": "Anyone?"}]}""";

    [Fact]
    public async Task BrokenRecordsAreSkippedByIdOrFailTheRun()
    {
        // A text-only multi-turn record trains beside an image record in one batch; the broken ones are skipped.
        var data = Data($"[{Good}, {MissingImage}, {EmptyConversation}, {TextOnly}, {NoAnswer}]");
        var result = await new Trainer(Options(data, "skip") with { PerDeviceBatchSize = 2 }).RunAsync();
        Assert.Equal(1, result.Steps);
        Assert.True(double.IsFinite(result.Log[0].Loss) && result.Log[0].Loss > 0);
        Assert.Equal(new[] { "lost", "empty", "unanswered" }.OrderBy(x => x), result.SkippedRecords.OrderBy(x => x));

        var strict = Options(Data($"[{Good}, {MissingImage}]"), "fail") with { SkipBadRecords = false };
        var e = await Assert.ThrowsAsync<TrainingDataException>(() => new Trainer(strict).RunAsync());
        Assert.Equal("lost", e.RecordId);
        Assert.Contains("nowhere.png", e.Message);
    }

    [Fact]
    public void OutOfRangeOptionsAreRefusedNamingTheOption()
    {
        var data = Data($"[{Good}]");
        var e = Assert.Throws<ModelConfigurationException>(() => new Trainer(Options(data, "x") with { LearningRate = 0 }));
        Assert.Equal("learning-rate", e.Key);
        Assert.Throws<ModelConfigurationException>(() => new Trainer(Options(data, "x") with { GradientAccumulationSteps = 0 }));
        Assert.Throws<ModelConfigurationException>(() => new Trainer(Options(data, "x") with { WarmupRatio = double.NaN }));
        Assert.Throws<ModelConfigurationException>(() => new Trainer(Options(data, "x") with { Lora = new LoraOptions(4), Stage = TrainingStage.Pretrain }));
    }

    [Fact]
    public async Task ANonFiniteLossStopsTheRunNamingTheStepAndTheLastCheckpoint()
    {
        var data = Data($"[{Good}]");
        // A learning rate this large throws the weights to ~1e30 in one step: the next loss is not finite.
        var options = Options(data, "nan") with { LearningRate = 1e30, LrScheduler = LrSchedulerKind.Constant, MaxSteps = 4, SaveSteps = 1 };
        var e = await Assert.ThrowsAsync<TrainingDivergedException>(() => new Trainer(options).RunAsync());
        Assert.True(e.Step >= 2, e.Message);
        Assert.NotNull(e.LastCheckpoint);
        Assert.EndsWith($"checkpoint-{e.Step - 1}", e.LastCheckpoint);
        Assert.Contains($"step {e.Step}", e.Message);
        Assert.True(File.Exists(Path.Combine(e.LastCheckpoint!, "trainer_state.json")));
    }
}
