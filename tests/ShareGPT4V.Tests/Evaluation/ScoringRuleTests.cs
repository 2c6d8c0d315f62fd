using ShareGPT4V.Evaluation;
using ShareGPT4V.Evaluation.Scorers;
using Xunit;

namespace ShareGPT4V.Tests.Evaluation;

/// <summary>The official scripts' parsing and normalisation rules, case by case (cases from the oracle eval README).</summary>
public class ScoringRuleTests
{
    [Theory]
    [InlineData("Two", "2")]
    [InlineData("The Beatles.", "beatles")]
    [InlineData("Coca-Cola", "coca cola")]
    [InlineData("1,000.", "1000")]
    [InlineData("(555) 123-4567", "555 123 4567")]
    [InlineData("It's", "it 's")]
    [InlineData("a - b", "b")]
    [InlineData("An", "")]
    [InlineData("3.5", "3.5")]
    [InlineData("U.S.A.", "usa")]
    [InlineData("dont", "don't")]
    [InlineData("isnt  youre", "isn't you're")]
    [InlineData("somebody'd", "somebodyd")]
    [InlineData("Im", "im")]
    [InlineData("none", "0")]
    [InlineData("Yes!\n", "yes")]
    public void EvalAiNormalisation(string answer, string expected) => Assert.Equal(expected, VqaAnswerNormalizer.Normalize(answer));

    [Fact]
    public void ThePeriodStripStopsAfter32Periods()
    {
        var many = string.Concat(Enumerable.Repeat("a.", 40));
        var n = VqaAnswerNormalizer.Normalize(many);
        Assert.Equal(8, n.Count(c => c == '.'));
        Assert.Equal(120, VqaAnswerNormalizer.ContractionCount);
    }

    [Theory]
    [InlineData(1, 0.3)]
    [InlineData(2, 0.6)]
    [InlineData(3, 0.9)]
    [InlineData(4, 1.0)]
    [InlineData(10, 1.0)]
    [InlineData(0, 0.0)]
    public void SoftScoreByNumberOfMatchingHumans(int matches, double expected)
    {
        var humans = Enumerable.Range(0, 10).Select(i => i < matches ? "two" : "other" + i).ToArray();
        Assert.Equal(expected, VqaAnswerNormalizer.SoftScore("2", humans), 12);
    }

    [Theory]
    [InlineData("NO", true)]
    [InlineData("Not sure", true)]
    [InlineData("Nope", true)]
    [InlineData("No!", true)]
    [InlineData("no;", true)]
    [InlineData("No\nThere is none", true)]
    [InlineData(".No", true)]
    [InlineData("", true)]
    [InlineData("Yes, there's no doubt.", false)]
    [InlineData("yes no", false)]
    [InlineData("No, there is not.", false)]
    [InlineData("There is not a dog", false)]
    public void PopeYesNo(string text, bool yes) => Assert.Equal(yes, PopeBenchmark.ParseYes(text));

    [Theory]
    [InlineData("B", "B")]
    [InlineData("C. conifer", "C")]
    [InlineData("A. ", "A")]
    [InlineData("B.", "FAILED")]
    [InlineData("(B)", "FAILED")]
    [InlineData("b", "FAILED")]
    [InlineData(" B", "FAILED")]
    [InlineData("B\n", "FAILED")]
    [InlineData("Answer: B", "FAILED")]
    [InlineData("the answer is B.", "FAILED")]
    [InlineData("The answer is B", "FAILED")]
    [InlineData("The answer is B,", "B")]
    [InlineData("The answer is BC", "B")]
    [InlineData("The answer is A. The answer is B.", "FAILED")]
    [InlineData("F", "FAILED")]
    public void ScienceQaLetter(string text, string letter) => Assert.Equal(letter, ScienceQaBenchmark.ExtractLetter(text));

    [Theory]
    [InlineData("Yes", "yes")]
    [InlineData("no", "no")]
    [InlineData("Eyes", "yes")]
    [InlineData("Snow", "no")]
    [InlineData("Know", "no")]
    [InlineData("None", "no")]
    [InlineData("Nope", "no")]
    [InlineData(" yes", "yes")]
    [InlineData("  yes", "other")]
    [InlineData("It is yes", "other")]
    [InlineData("Yeah", "other")]
    [InlineData("Y", "other")]
    public void MmeAnswer(string text, string parsed) => Assert.Equal(parsed, MmeBenchmark.ParseAnswer(text));

    [Theory]
    [InlineData("Man..", "man")]
    [InlineData("Yes ", "yes ")]
    [InlineData(" no", " no")]
    [InlineData("no\n", "no\n")]
    public void GqaPrediction(string text, string prediction) => Assert.Equal(prediction, GqaBenchmark.Prediction(text));

    [Theory]
    [InlineData("What is x?\nAnswer the question using a single word or phrase.", "what is x?")]
    [InlineData("What is x?\nReference OCR token: A, B\nAnswer the question using a single word or phrase.", "what is x?")]
    [InlineData("Reference OCR token: A\nWhat is X?\nAnswer.", "what is x?")]
    [InlineData("OCR tokens: a b Question: What is X? Short answer:", "what is x?")]
    [InlineData("one line", null)]
    public void TextVqaQuestionFromPrompt(string prompt, string? question) => Assert.Equal(question, TextVqaBenchmark.QuestionFromPrompt(prompt));

    [Theory]
    [InlineData("B", 1)]
    [InlineData("B. the bottom", 1)]
    [InlineData("the left.", 2)]
    [InlineData("THE RIGHT", 3)]
    [InlineData("E", -1)]
    [InlineData("Both", -1)]
    public void QBenchOption(string text, int option) =>
        Assert.Equal(option, QBenchBenchmark.ChosenOption(text, new[] { "the top", "the bottom", "the left", "the right" }));

    [Theory]
    [InlineData(0.0625, 3, 0.062)]
    [InlineData(0.1875, 3, 0.188)]
    [InlineData(2.675, 2, 2.67)] // binary 2.67499999...: Python rounds down
    [InlineData(85.71428571428571, 1, 85.7)]
    [InlineData(4.6666666666666667, 3, 4.667)]
    public void PythonRoundIsExact(double x, int digits, double expected) => Assert.Equal(expected, PythonRound.Round(x, digits));

    [Theory]
    [InlineData(10, 3, new[] { 4, 4, 2 })]
    [InlineData(5, 2, new[] { 3, 2 })]
    [InlineData(4, 3, new[] { 2, 2, 0 })] // ceil(4/3) = 2: LLaVA's get_chunk has no third chunk (IndexError); here it is empty
    public void ShardsCutAsLlavaGetChunk(int items, int shards, int[] sizes)
    {
        var list = Enumerable.Range(0, items).ToList();
        var slices = Enumerable.Range(0, shards).Select(i => new Shard(i, shards).Slice(list)).ToList();
        Assert.Equal(sizes, slices.Select(s => s.Count).ToArray());
        Assert.Equal(list, slices.SelectMany(s => s).ToList());
    }

    [Fact]
    public void ShardComesFromAnIndexedJobsEnvironment()
    {
        var env = new Dictionary<string, string?> { ["JOB_COMPLETION_INDEX"] = "2", ["JOB_COMPLETIONS"] = "4" };
        Assert.Equal(new Shard(2, 4), Shard.FromEnvironment(k => env.GetValueOrDefault(k)));
        Assert.Null(Shard.FromEnvironment(_ => null));
        Assert.Throws<FormatException>(() => Shard.FromEnvironment(k => k == "JOB_COMPLETIONS" ? "4" : null));
        Assert.Throws<FormatException>(() => Shard.Parse("4/4"));
        Assert.Throws<FormatException>(() => Shard.Parse("a/b"));
    }
}
