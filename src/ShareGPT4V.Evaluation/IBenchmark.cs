using ShareGPT4V.Preprocessing;

namespace ShareGPT4V.Evaluation;

/// <summary>Which reference runner script a benchmark's answers come from; it decides the prompt construction.</summary>
public enum PromptStyle
{
    /// <summary><c>model_vqa_loader</c>: <c>&lt;image&gt;\n</c> + the question file's <c>text</c> (which already carries the suffix).</summary>
    Loader,
    /// <summary><c>model_vqa</c> (LLaVA-Bench, MM-Vet): <c>&lt;image&gt;\n</c> + <c>text</c>, no suffix.</summary>
    OpenEnded,
    /// <summary><c>model_vqa_science --single-pred-prompt</c>: question from <c>conversations[0]</c>, image only when the problem has one, letter suffix.</summary>
    Science,
    /// <summary><c>model_vqa_mmbench --single-pred-prompt</c>: hint, question and lettered options from the TSV, letter suffix (English or Chinese).</summary>
    MmBench,
    /// <summary><c>model_vqa_qbench</c>: question, "Choose between one of the options as follows:" and lettered candidates.</summary>
    QBench,
}

/// <summary>How the reference ran a benchmark: prompt construction, preprocessing and generation length.</summary>
/// <param name="Style">Prompt construction (the reference runner).</param>
/// <param name="Preprocessing">Pad to a square (LLaVA-1.5 <c>process_images</c>) or plain resize + centre crop (the scripts that call the image processor directly).</param>
/// <param name="MaxNewTokens">The runner's <c>max_new_tokens</c>.</param>
/// <param name="Language"><c>en</c>, or <c>cn</c> (MMBench-CN) / <c>zh</c> (Q-Bench Chinese).</param>
public sealed record BenchmarkRunSettings(PromptStyle Style, ImageAspectMode Preprocessing, int MaxNewTokens, string Language = "en");

/// <summary>A benchmark: how its answers are produced (prompt, preprocessing) and how they are scored.</summary>
public interface IBenchmark
{
    /// <summary>Name used on the command line (<c>pope</c>, <c>mmbench-cn</c>, ...).</summary>
    string Name { get; }
    /// <summary>Column title in the paper's table (<c>MME-P</c>, <c>SQA-I</c>, ...).</summary>
    string Title { get; }
    /// <summary>How the reference ran it.</summary>
    BenchmarkRunSettings RunSettings { get; }
    /// <summary>Whether <see cref="Score"/> works locally (false for judge-scored or server-scored benchmarks).</summary>
    bool CanScoreLocally { get; }
    /// <summary>
    /// Scores an answer file against the benchmark's annotations (a file or folder, the path the official script takes).
    /// </summary>
    /// <exception cref="EvaluationDataException">A file is missing or malformed (message names file and line).</exception>
    EvaluationReport Score(string answersPath, string annotationsPath);
}
