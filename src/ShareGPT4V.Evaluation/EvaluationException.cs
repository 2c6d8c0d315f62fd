namespace ShareGPT4V.Evaluation;

/// <summary>
/// A benchmark file (questions, answers, annotations) is missing or malformed, or answers and annotations do not
/// fit together. The message names the file and, where one is at fault, the 1-based line (or record).
/// </summary>
public class EvaluationDataException : ShareGPT4VException
{
    /// <summary>The file at fault, when one is known.</summary>
    public string? FilePath { get; }
    /// <summary>The 1-based line (or record number) at fault, when one is known.</summary>
    public int? Line { get; }

    /// <summary>Creates the exception; the file and line are appended to the message.</summary>
    public EvaluationDataException(string message, string? filePath = null, int? line = null, Exception? inner = null)
        : base(Compose(message, filePath, line), inner)
    {
        FilePath = filePath;
        Line = line;
    }

    private static string Compose(string message, string? file, int? line) => (file, line) switch
    {
        (not null, not null) => $"{message} ({file}, line {line})",
        (not null, null) => $"{message} ({file})",
        (null, not null) => $"{message} (line {line})",
        _ => message,
    };
}
