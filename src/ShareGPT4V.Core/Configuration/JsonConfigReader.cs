using System.Text.Json;

namespace ShareGPT4V.Configuration;

/// <summary>
/// Typed access to one JSON object of a config file, with errors that name the file and key. Hub configs often
/// omit keys that equal the library defaults, so every getter takes the default that transformers' config class uses.
/// </summary>
internal sealed class JsonConfigReader
{
    /// <summary>Config files are small; anything bigger than this is not a config.</summary>
    public const long MaxConfigBytes = 16 * 1024 * 1024;

    private readonly JsonElement _obj;
    public string FilePath { get; }
    private readonly string _prefix;

    public JsonConfigReader(JsonElement obj, string filePath, string prefix = "")
    {
        if (obj.ValueKind != JsonValueKind.Object)
            throw new ModelConfigurationException("Expected a JSON object", filePath, prefix.TrimEnd('.') is { Length: > 0 } p ? p : null);
        _obj = obj;
        FilePath = filePath;
        _prefix = prefix;
    }

    /// <summary>Parses a whole config file. The document is cloned so the caller need not keep it alive.</summary>
    public static JsonConfigReader Load(string path)
    {
        var full = Path.GetFullPath(path);
        if (!File.Exists(full))
            throw new ModelConfigurationException("Configuration file not found", full);
        var len = new FileInfo(full).Length;
        if (len > MaxConfigBytes)
            throw new ModelConfigurationException($"Configuration file is {len} bytes, more than the {MaxConfigBytes} accepted", full);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(full), new JsonDocumentOptions { MaxDepth = 32, AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
            if (JsonText.FindUndecodableString(doc.RootElement) is { } where)
                throw new ModelConfigurationException(JsonText.UndecodableMessage(where), full);
            return new JsonConfigReader(doc.RootElement.Clone(), full);
        }
        catch (JsonException e)
        {
            throw new ModelConfigurationException($"Configuration file is not valid JSON: {e.Message}", full, inner: e);
        }
    }

    private string K(string key) => _prefix + key;

    /// <summary>The key path of this object inside its file ("" at the top, "text_config." inside text_config).</summary>
    public string KeyPrefix => _prefix;

    public bool Has(string key) => _obj.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null;

    public JsonConfigReader? Object(string key)
    {
        if (!_obj.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.Object)
            throw new ModelConfigurationException("Expected an object", FilePath, K(key));
        return new JsonConfigReader(v, FilePath, K(key) + ".");
    }

    public JsonElement? Raw(string key) =>
        _obj.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    public int RequireInt(string key) =>
        Int(key, null) ?? throw new ModelConfigurationException("Required key is missing", FilePath, K(key));

    public int Int(string key, int fallback) => Int(key, null) ?? fallback;

    public int? Int(string key, int? fallback)
    {
        if (!_obj.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return fallback;
        if (v.ValueKind == JsonValueKind.Number)
        {
            if (v.TryGetInt32(out var i)) return i;
            if (v.TryGetDouble(out var d) && d == Math.Floor(d) && Math.Abs(d) <= int.MaxValue) return (int)d;
        }
        throw new ModelConfigurationException($"Expected an integer, found {Describe(v)}", FilePath, K(key));
    }

    public double Double(string key, double fallback) => Double(key, (double?)null) ?? fallback;

    public double? Double(string key, double? fallback)
    {
        if (!_obj.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return fallback;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out var d) && double.IsFinite(d)) return d;
        throw new ModelConfigurationException($"Expected a number, found {Describe(v)}", FilePath, K(key));
    }

    public bool Bool(string key, bool fallback)
    {
        if (!_obj.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return fallback;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new ModelConfigurationException($"Expected true or false, found {Describe(v)}", FilePath, K(key)),
        };
    }

    public string? String(string key, string? fallback = null)
    {
        if (!_obj.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return fallback;
        if (v.ValueKind != JsonValueKind.String)
            throw new ModelConfigurationException($"Expected a string, found {Describe(v)}", FilePath, K(key));
        return v.GetString();
    }

    public string[]? StringArray(string key)
    {
        if (!_obj.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.Array)
            throw new ModelConfigurationException($"Expected an array of strings, found {Describe(v)}", FilePath, K(key));
        return v.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()!
            : throw new ModelConfigurationException("Expected an array of strings", FilePath, K(key))).ToArray();
    }

    /// <summary>An integer or the first integer of an array (eos_token_id may be either).</summary>
    public int? IntOrFirst(string key, int? fallback)
    {
        if (!_obj.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return fallback;
        if (v.ValueKind == JsonValueKind.Array)
        {
            foreach (var e in v.EnumerateArray())
                if (e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out var i)) return i;
            return fallback;
        }
        return Int(key, fallback);
    }

    public int[] IntList(string key)
    {
        if (!_obj.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return Array.Empty<int>();
        if (v.ValueKind == JsonValueKind.Array)
            return v.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out var i) ? i
                : throw new ModelConfigurationException("Expected an array of integers", FilePath, K(key))).ToArray();
        return Int(key, (int?)null) is int one ? new[] { one } : Array.Empty<int>();
    }

    private static string Describe(JsonElement v) => v.ValueKind switch
    {
        JsonValueKind.String => $"the string \"{Truncate(v.GetString()!)}\"",
        JsonValueKind.Number => $"the number {v.GetRawText()}",
        _ => v.ValueKind.ToString().ToLowerInvariant(),
    };

    private static string Truncate(string s) => s.Length <= 40 ? s : s[..40] + "...";
}
