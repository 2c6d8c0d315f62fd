namespace ShareGPT4V;

/// <summary>Base class of every error the library raises on purpose. Catch this to handle all of them.</summary>
public class ShareGPT4VException : Exception
{
    /// <summary>An error with its message.</summary>
    /// <param name="message">What went wrong, naming the file, option or input at fault.</param>
    /// <param name="inner">The error that caused this one, if any.</param>
    public ShareGPT4VException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>A checkpoint file is missing, truncated, malformed, or does not match the model it is loaded into.</summary>
public class CheckpointFormatException : ShareGPT4VException
{
    /// <summary>The file at fault, when one is known.</summary>
    public string? FilePath { get; }
    /// <summary>The tensor at fault, when one is known.</summary>
    public string? TensorName { get; }

    /// <summary>An error in a checkpoint; the file and tensor are appended to the message.</summary>
    /// <param name="message">What is wrong.</param>
    /// <param name="filePath">The file at fault, if known.</param>
    /// <param name="tensorName">The tensor at fault, if known.</param>
    /// <param name="inner">The error that caused this one, if any.</param>
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
    /// <summary>A refused pickle; the file is appended to the message.</summary>
    /// <param name="message">What the pickle asked for.</param>
    /// <param name="filePath">The checkpoint file, if known.</param>
    /// <param name="inner">The error that caused this one, if any.</param>
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

    /// <summary>A configuration error; the key and file are appended to the message.</summary>
    /// <param name="message">What is wrong.</param>
    /// <param name="filePath">The file at fault, if known.</param>
    /// <param name="key">The key or option at fault, if known.</param>
    /// <param name="inner">The error that caused this one, if any.</param>
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
    /// <summary>The image at fault (its file path or given name), when one is known.</summary>
    public string? ImageName { get; }

    /// <summary>An image error; the image's name is appended to the message.</summary>
    /// <param name="message">What is wrong.</param>
    /// <param name="source">The image's file path or name, if known.</param>
    /// <param name="inner">The error that caused this one, if any.</param>
    public ImageInputException(string message, string? source = null, Exception? inner = null)
        : base(message + (source is null ? "" : $" (image '{source}')"), inner) { ImageName = source; }
}

/// <summary>A prompt is invalid: too long for the context window, image markers and images disagree, unknown template.</summary>
public class PromptException : ShareGPT4VException
{
    /// <summary>A prompt error.</summary>
    /// <param name="message">What is wrong and, where it helps, which option changes it.</param>
    /// <param name="inner">The error that caused this one, if any.</param>
    public PromptException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>A device was requested that cannot be used (CUDA not available, unknown device string, not enough memory).</summary>
public class DeviceException : ShareGPT4VException
{
    /// <summary>A device error.</summary>
    /// <param name="message">Why the device cannot be used and what to change.</param>
    /// <param name="inner">The error that caused this one, if any.</param>
    public DeviceException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>
/// The native libtorch runtime that TorchSharp needs could not be loaded: the app references no libtorch runtime package
/// for this platform (or a broken one). The message names the package to add.
/// </summary>
public sealed class LibTorchNotFoundException : DeviceException
{
    /// <summary>The runtime package for this platform (e.g. <c>libtorch-cpu-linux-x64</c>), or null when none exists.</summary>
    public string? PackageId { get; }

    /// <summary>Creates the error; <paramref name="packageId"/> is the runtime package to add, when one exists.</summary>
    public LibTorchNotFoundException(string message, string? packageId, Exception? inner = null) : base(message, inner) => PackageId = packageId;
}

/// <summary>
/// A Hugging Face hub request failed: repository, revision or file not found, access refused (gated or private without a
/// token), a download whose size or hash does not match, or a file needed offline that is not in the cache.
/// </summary>
public class HubException : ShareGPT4VException
{
    /// <summary>The repository, e.g. <c>Lin-Chen/ShareGPT4V-7B</c>.</summary>
    public string RepoId { get; }
    /// <summary>The file at fault, when one is known.</summary>
    public string? FileName { get; }
    /// <summary>The HTTP status the hub answered, when there was an answer.</summary>
    public int? StatusCode { get; }

    /// <summary>Creates the error; the message gets the repository, file and status appended.</summary>
    public HubException(string message, string repoId, string? fileName = null, int? statusCode = null, Exception? inner = null)
        : base(message + $" (repository '{repoId}'" + (fileName is null ? "" : $", file '{fileName}'") + (statusCode is null ? "" : $", HTTP {statusCode}") + ")", inner)
    {
        RepoId = repoId;
        FileName = fileName;
        StatusCode = statusCode;
    }
}

/// <summary>The hub refused access (HTTP 401 / 403): a gated or private repository needs a token (HF_TOKEN).</summary>
public sealed class HubAuthenticationException : HubException
{
    /// <summary>Creates the error for the status the hub answered.</summary>
    public HubAuthenticationException(string message, string repoId, string? fileName, int statusCode)
        : base(message, repoId, fileName, statusCode) { }
}

/// <summary>A downloaded file's size or sha256 differs from what the hub announced; it was not made visible.</summary>
public sealed class HubIntegrityException : HubException
{
    /// <summary>Creates the error for the file whose bytes did not match.</summary>
    public HubIntegrityException(string message, string repoId, string fileName) : base(message, repoId, fileName) { }
}
