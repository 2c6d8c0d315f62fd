namespace ShareGPT4V;

/// <summary>Base class of every error the library raises on purpose. Catch this to handle all of them.</summary>
public class ShareGPT4VException : Exception
{
    public ShareGPT4VException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>A checkpoint file is missing, truncated, malformed, or does not match the model it is loaded into.</summary>
public class CheckpointFormatException : ShareGPT4VException
{
    /// <summary>The file at fault, when one is known.</summary>
    public string? FilePath { get; }
    /// <summary>The tensor at fault, when one is known.</summary>
    public string? TensorName { get; }

    public CheckpointFormatException(string message, string? filePath = null, string? tensorName = null, Exception? inner = null)
        : base(Compose(message, filePath, tensorName), inner)
    {
        FilePath = filePath;
        TensorName = tensorName;
    }

    private static string Compose(string message, string? file, string? tensor)
    {
        var where = (file, tensor) switch
        {
            (not null, not null) => $" (file '{file}', tensor '{tensor}')",
            (not null, null) => $" (file '{file}')",
            (null, not null) => $" (tensor '{tensor}')",
            _ => "",
        };
        return message + where;
    }
}

/// <summary>A pickle in a PyTorch checkpoint asked for something outside the allow-list (code execution attempt or unsupported content).</summary>
public sealed class UnsafeCheckpointException : CheckpointFormatException
{
    public UnsafeCheckpointException(string message, string? filePath = null, Exception? inner = null)
        : base(message, filePath, null, inner) { }
}

/// <summary>A configuration file or option is missing, malformed or out of range.</summary>
public class ModelConfigurationException : ShareGPT4VException
{
    /// <summary>The file at fault, when one is known.</summary>
    public string? FilePath { get; }
    /// <summary>The key or option at fault, when one is known.</summary>
    public string? Key { get; }

    public ModelConfigurationException(string message, string? filePath = null, string? key = null, Exception? inner = null)
        : base(message + (key is null ? "" : $" (key '{key}')") + (filePath is null ? "" : $" (file '{filePath}')"), inner)
    {
        FilePath = filePath;
        Key = key;
    }
}

/// <summary>An image could not be read, is not an image, or exceeds the configured limits.</summary>
public class ImageInputException : ShareGPT4VException
{
    public string? ImageName { get; }
    public ImageInputException(string message, string? source = null, Exception? inner = null)
        : base(message + (source is null ? "" : $" (image '{source}')"), inner) { ImageName = source; }
}

/// <summary>A prompt is invalid: too long for the context window, image markers and images disagree, unknown template.</summary>
public class PromptException : ShareGPT4VException
{
    public PromptException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>A device was requested that cannot be used (CUDA not available, unknown device string, not enough memory).</summary>
public class DeviceException : ShareGPT4VException
{
    public DeviceException(string message, Exception? inner = null) : base(message, inner) { }
}
