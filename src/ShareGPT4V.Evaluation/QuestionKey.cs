using System.Globalization;
using System.Text.Json;

namespace ShareGPT4V.Evaluation;

/// <summary>
/// A question id as a JSON file carries it. Python dictionaries keep <c>1</c> and <c>"1"</c> apart, and the official
/// scorers rely on that (SEED looks annotation ids up as integers), so the key remembers whether it was a number.
/// </summary>
public readonly record struct QuestionKey(bool IsNumber, string Value)
{
    /// <summary>A numeric id.</summary>
    public static QuestionKey Number(long value) => new(true, value.ToString(CultureInfo.InvariantCulture));
    /// <summary>A string id.</summary>
    public static QuestionKey String(string value) => new(false, value);

    /// <summary>Reads an id from a JSON value (integer or string).</summary>
    /// <exception cref="FormatException">The value is neither an integer nor a string.</exception>
    public static QuestionKey FromJson(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.String => String(e.GetString()!),
        JsonValueKind.Number when e.TryGetInt64(out var n) => Number(n),
        JsonValueKind.Number when e.TryGetDouble(out var d) && d == Math.Floor(d) && Math.Abs(d) < 1e15 => Number((long)d),
        _ => throw new FormatException($"a question id must be an integer or a string, got {e.ValueKind}"),
    };

    /// <summary>Writes the id back as JSON (a number or a string, as it came).</summary>
    public void WriteTo(Utf8JsonWriter w)
    {
        if (IsNumber) w.WriteNumberValue(long.Parse(Value, CultureInfo.InvariantCulture));
        else w.WriteStringValue(Value);
    }

    /// <summary>The id as text (numbers without quotes, strings as they are).</summary>
    public override string ToString() => Value;
}
