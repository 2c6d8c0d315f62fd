using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V.Tests.Oracle;
using Xunit;

namespace ShareGPT4V.Tests.Evaluation;

/// <summary>Questions → answers → score through the CLI on the hf_llama2vocab oracle checkpoint, sharded and not.</summary>
public sealed class EndToEndTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-e2e-").FullName;
    private readonly GoldenCase _case = GoldenCase.Get("hf_llama2vocab");
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static List<string> Stable(string path) => File.ReadAllLines(path).Select(l =>
    {
        var o = JsonNode.Parse(l)!.AsObject();
        o.Remove("answer_id");
        return o.ToJsonString();
    }).ToList();

    [Fact]
    public void PopeRunShardedByJobIndexMergedAndScored()
    {
        var annotations = Path.Combine(_dir, "pope");
        Directory.CreateDirectory(Path.Combine(annotations, "coco"));
        var objects = new[] { "dog", "cat", "car", "tree", "cup" };
        var questions = Path.Combine(annotations, "llava_pope_test.jsonl");
        File.WriteAllLines(questions, objects.Select((o, i) => new JsonObject
        {
            ["question_id"] = i + 1, ["image"] = i % 2 == 0 ? "image1.png" : "image2.png",
            ["text"] = $"Is there a {o} in the image?\nAnswer the question using a single word or phrase.", ["category"] = "random",
        }.ToJsonString()));
        File.WriteAllLines(Path.Combine(annotations, "coco", "coco_pope_random.json"), objects.Select((o, i) => new JsonObject
        {
            ["question_id"] = i + 1, ["image"] = "x.jpg", ["text"] = o, ["label"] = i < 2 ? "yes" : "no",
        }.ToJsonString()));

        string[] Run(string answers, params string[] extra) => new[]
        {
            "eval", "run", "--benchmark", "pope", "--model", _case.ModelPath, "--questions", questions, "--image-folder", _case.Dir,
            "--answers", answers, "--max-new-tokens", "4", "--batch-size", "2", "--model-id", "tiny",
        }.Concat(extra).ToArray();

        var whole = Path.Combine(_dir, "whole.jsonl");
        var r = EvalCli.Run(Run(whole));
        Assert.True(r.ExitCode == 0, r.Err);
        Assert.Contains("5 answered", r.Err);
        var part0 = Path.Combine(_dir, "p0.jsonl");
        var part1 = Path.Combine(_dir, "p1.jsonl");
        r = EvalCli.Run(Run(part0, "--shard", "0/2"));
        Assert.True(r.ExitCode == 0, r.Err);
        r = EvalCli.RunWithEnvironment(new Dictionary<string, string> { ["JOB_COMPLETION_INDEX"] = "1", ["JOB_COMPLETIONS"] = "2" }, Run(part1));
        Assert.True(r.ExitCode == 0, r.Err);
        Assert.Equal(3, File.ReadAllLines(part0).Length);
        Assert.Equal(2, File.ReadAllLines(part1).Length);

        var merged = Path.Combine(_dir, "merged.jsonl");
        r = EvalCli.Run("eval", "merge", "--answers", merged, "--input", part1, "--input", part0, "--questions", questions, "--benchmark", "pope");
        Assert.True(r.ExitCode == 0, r.Err);
        Assert.Equal(Stable(whole), Stable(merged));

        r = EvalCli.Run("eval", "score", "--benchmark", "pope", "--answers", merged, "--annotations", annotations, "--json");
        Assert.True(r.ExitCode == 0, r.Err);
        var random = JsonDocument.Parse(r.Out).RootElement.GetProperty("random");
        Assert.Equal(5, random.GetProperty("samples").GetInt32());
        Assert.Equal(5, new[] { "TP", "FP", "TN", "FN" }.Sum(k => random.GetProperty(k).GetInt32()));
        // The score agrees with the POPE rule applied to the answers the model gave.
        int yes = File.ReadAllLines(merged).Count(l => ShareGPT4V.Evaluation.Scorers.PopeBenchmark.ParseYes(JsonDocument.Parse(l).RootElement.GetProperty("text").GetString()!));
        Assert.Equal(yes / 5.0, random.GetProperty("yes_ratio").GetDouble(), 12);
    }
}
