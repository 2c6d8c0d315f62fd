using System.Text.Json;

namespace ShareGPT4V.Configuration;

/// <summary>Checks on JSON documents read from untrusted files.</summary>
internal static class JsonText
{
    /// <summary>
    /// Reads every property name and string value of <paramref name="root"/> once. System.Text.Json accepts invalid
    /// UTF-8 and escaped lone surrogates (<c>"\ud800"</c>) while parsing and only fails, with an
    /// <see cref="InvalidOperationException"/>, when such a string is read; checking up front lets callers raise their
    /// own typed error. Returns the JSON path of the first undecodable string, or null when all decode.
    /// </summary>
    public static string? FindUndecodableString(JsonElement root) => Find(root, "$");

    private static string? Find(JsonElement e, string path)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.Object:
                foreach (var p in e.EnumerateObject())
                {
                    string name;
                    try { name = p.Name; }
                    catch (InvalidOperationException) { return path + " (a key)"; }
                    if (p.Value.ValueKind is JsonValueKind.Object or JsonValueKind.Array or JsonValueKind.String
                        && Find(p.Value, path + "." + name) is { } inner)
                        return inner;
                }
                return null;
            case JsonValueKind.Array:
                int i = 0;
                foreach (var item in e.EnumerateArray())
                {
                    if (item.ValueKind is JsonValueKind.Object or JsonValueKind.Array or JsonValueKind.String
                        && Find(item, $"{path}[{i}]") is { } inner)
                        return inner;
                    i++;
                }
                return null;
            case JsonValueKind.String:
                try { _ = e.GetString(); return null; }
                catch (InvalidOperationException) { return path; }
            default:
                return null;
        }
    }

    /// <summary>The message of the error raised for <see cref="FindUndecodableString"/>'s finding.</summary>
    public static string UndecodableMessage(string where) =>
        $"JSON string at {where} is not valid text (invalid UTF-8 or an escaped lone surrogate such as \\ud800)";
}
