using ShareGPT4V.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Training;

/// <summary>A set of parameters sharing a base learning rate and weight decay (Trainer's optimizer groups).</summary>
internal sealed record ParameterGroup(string Name, IReadOnlyList<(string Name, Tensor Param)> Parameters, double BaseLr, double WeightDecay);

/// <summary>
/// AdamW step for step as PyTorch's single-tensor AdamW (the default on CPU in torch 1.13, what Trainer's
/// <c>adamw_torch</c> runs): decoupled decay <c>p *= 1 - lr·wd</c>; <c>m = m·β1 + g·(1-β1)</c>;
/// <c>v = v·β2 + g²·(1-β2)</c>; <c>p -= lr/(1-β1ᵗ) · m / (sqrt(v)/sqrt(1-β2ᵗ) + eps)</c>, the scalars computed in double
/// as Python does. A parameter without a gradient is skipped and its step count stays where it was.
/// </summary>
internal sealed class AdamW : IDisposable
{
    internal sealed class State
    {
        public long Step;
        public required Tensor ExpAvg;
        public required Tensor ExpAvgSq;
    }

    private readonly double _beta1, _beta2, _eps;
    public IReadOnlyList<ParameterGroup> Groups { get; }
    public Dictionary<string, State> States { get; } = new(StringComparer.Ordinal);

    public AdamW(IReadOnlyList<ParameterGroup> groups, double beta1, double beta2, double eps)
    {
        Groups = groups;
        _beta1 = beta1;
        _beta2 = beta2;
        _eps = eps;
    }

    /// <summary>One step with each group's learning rate = its base rate × <paramref name="lrFactor"/>.</summary>
    public void Step(double lrFactor)
    {
        using var noGrad = torch.no_grad();
        foreach (var group in Groups)
        {
            double lr = group.BaseLr * lrFactor;
            foreach (var (name, p) in group.Parameters)
            {
                using var grad = p.grad;
                if (grad is null) continue;
                using var held = new HeldScalars();
                if (!States.TryGetValue(name, out var st))
                {
                    st = new State
                    {
                        ExpAvg = torch.zeros_like(p).DetachFromDisposeScope(),
                        ExpAvgSq = torch.zeros_like(p).DetachFromDisposeScope(),
                    };
                    States[name] = st;
                }
                st.Step++;
                if (group.WeightDecay != 0) p.mul_(held[1 - lr * group.WeightDecay]);
                st.ExpAvg.mul_(held[_beta1]).add_(grad, held[1 - _beta1]);
                st.ExpAvgSq.mul_(held[_beta2]).addcmul_(grad, grad, held[1 - _beta2]);
                double bc1 = 1 - Math.Pow(_beta1, st.Step);
                double bc2 = 1 - Math.Pow(_beta2, st.Step);
                double stepSize = lr / bc1;
                using var denom = st.ExpAvgSq.sqrt().div_(held[Math.Sqrt(bc2)]).add_(held[_eps]);
                p.addcdiv_(st.ExpAvg, denom, held[-stepSize]);
            }
        }
    }

    public void Dispose()
    {
        foreach (var s in States.Values)
        {
            s.ExpAvg.Dispose();
            s.ExpAvgSq.Dispose();
        }
        States.Clear();
    }
}

/// <summary>Learning-rate schedules as transformers' <c>get_scheduler</c> builds them (LambdaLR factors).</summary>
public enum LrSchedulerKind
{
    /// <summary>Linear warmup, then half a cosine down to 0.</summary>
    Cosine,
    /// <summary>Linear warmup, then linear decay to 0.</summary>
    Linear,
    /// <summary>The base rate throughout (warmup ignored, as transformers' <c>constant</c>).</summary>
    Constant,
    /// <summary>Linear warmup, then the base rate.</summary>
    ConstantWithWarmup,
}

internal static class LrSchedule
{
    /// <summary>The factor of the base rate after <paramref name="step"/> scheduler steps.</summary>
    public static double Factor(LrSchedulerKind kind, long step, long warmup, long total)
    {
        switch (kind)
        {
            case LrSchedulerKind.Constant:
                return 1.0;
            case LrSchedulerKind.ConstantWithWarmup:
                return step < warmup ? (double)step / Math.Max(1.0, warmup) : 1.0;
        }
        if (step < warmup) return (double)step / Math.Max(1, warmup);
        if (kind == LrSchedulerKind.Linear)
            return Math.Max(0.0, (double)(total - step) / Math.Max(1, total - warmup));
        double progress = (double)(step - warmup) / Math.Max(1, total - warmup);
        return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * 0.5 * 2.0 * progress)));
    }

    /// <summary>Warmup steps as <c>TrainingArguments.get_warmup_steps</c>: the step count when set, else ceil(ratio × total).</summary>
    public static long WarmupSteps(long total, int warmupSteps, double warmupRatio) =>
        warmupSteps > 0 ? warmupSteps : (long)Math.Ceiling(total * warmupRatio);

    public static LrSchedulerKind Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "cosine" => LrSchedulerKind.Cosine,
        "linear" => LrSchedulerKind.Linear,
        "constant" => LrSchedulerKind.Constant,
        "constant_with_warmup" => LrSchedulerKind.ConstantWithWarmup,
        _ => throw new ModelConfigurationException($"Unknown learning-rate scheduler '{name}' (cosine, linear, constant, constant_with_warmup)", null, "lr_scheduler"),
    };
}
