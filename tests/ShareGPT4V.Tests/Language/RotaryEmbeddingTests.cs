using ShareGPT4V.Configuration;
using ShareGPT4V.Language;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Language;

/// <summary>Properties that pin each rope_scaling form to its definition in transformers.</summary>
public class RotaryEmbeddingTests
{
    private static LlamaConfig Config(RopeScaling? s) => new() { HiddenSize = 64, NumAttentionHeads = 4, NumKeyValueHeads = 4, HeadDim = 16, MaxPositionEmbeddings = 32, RopeScaling = s };

    private static (Tensor Cos, Tensor Sin) At(LlamaConfig c, params long[] positions)
    {
        using var rope = new RotaryEmbedding(c);
        using var pos = torch.tensor(positions).unsqueeze(0);
        return rope.Get(pos, ScalarType.Float32);
    }

    [Fact]
    public void DefaultMatchesTheClosedForm()
    {
        var (cos, sin) = At(Config(null), 0, 5, 31);
        // angle(p, i) = p * 10000^(-2i/d), duplicated over the two halves
        for (int i = 0; i < 8; i++)
        {
            double angle = 31 * Math.Pow(10000, -2.0 * i / 16);
            Assert.Equal(Math.Cos(angle), cos[0, 2, i].item<float>(), 4);
            Assert.Equal(Math.Sin(angle), sin[0, 2, i + 8].item<float>(), 4);
        }
        Assert.Equal(1f, cos[0, 0, 3].item<float>());
    }

    [Fact]
    public void LinearScalingDividesPositions()
    {
        var (c2, s2) = At(Config(new RopeScaling { Type = "linear", Factor = 2 }), 10);
        var (c1, s1) = At(Config(null), 5);
        Assert.True((c2 - c1).abs().max().item<float>() < 1e-5);
        Assert.True((s2 - s1).abs().max().item<float>() < 1e-5);
    }

    [Fact]
    public void DynamicScalingIsInactiveInsideTheTrainedLengthAndGrowsTheBaseBeyondIt()
    {
        var dyn = Config(new RopeScaling { Type = "dynamic", Factor = 2 });
        var (cd, _) = At(dyn, 0, 7, 31);
        var (cp, _) = At(Config(null), 0, 7, 31);
        Assert.True((cd - cp).abs().max().item<float>() == 0);
        // Beyond 32 positions: base' = 10000 * (2 * 64 / 32 - 1)^(16 / 14) for a sequence of 64.
        var (cl, _) = At(dyn, 63);
        double theta = 10000 * Math.Pow(2.0 * 64 / 32 - 1, 16.0 / 14);
        double angle = 63 * Math.Pow(theta, -2.0 * 3 / 16);
        Assert.Equal(Math.Cos(angle), cl[0, 0, 3].item<float>(), 4);
    }

    [Fact]
    public void Llama3KeepsHighFrequenciesAndDividesLowOnes()
    {
        var s = new RopeScaling { Type = "llama3", Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 64 };
        var (c3, _) = At(Config(s), 1);
        var (c0, _) = At(Config(null), 1);
        // i = 0: wavelength 2π < 64/4: unchanged. i = 7: wavelength 2π·10000^(14/16) ≈ 20000 > 64: frequency / 8.
        Assert.Equal(c0[0, 0, 0].item<float>(), c3[0, 0, 0].item<float>());
        double inv7 = Math.Pow(10000, -14.0 / 16) / 8;
        Assert.Equal(Math.Cos(inv7), c3[0, 0, 7].item<float>(), 5);
    }
}
