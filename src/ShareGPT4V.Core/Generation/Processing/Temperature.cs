namespace ShareGPT4V.Generation.Processing;

/// <summary>transformers' <c>TemperatureLogitsWarper</c>: every score divided by the temperature.</summary>
internal sealed class Temperature : LogitsProcessor
{
    private readonly float _t;

    public Temperature(double temperature)
    {
        if (!(temperature > 0) || double.IsInfinity(temperature)) throw new ArgumentOutOfRangeException(nameof(temperature), temperature, "The temperature must be a finite number > 0");
        Value = temperature;
        _t = (float)temperature;
    }

    public double Value { get; }

    public override void Apply(ReadOnlySpan<int> history, Span<float> scores)
    {
        for (int i = 0; i < scores.Length; i++) scores[i] /= _t;
    }

    public override string Describe() => $"TemperatureLogitsWarper(temperature={Value})";
}
