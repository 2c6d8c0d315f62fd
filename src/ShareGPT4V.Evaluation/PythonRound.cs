using System.Numerics;

namespace ShareGPT4V.Evaluation;

/// <summary>Python's <c>round(x, n)</c>: the exact binary value rounded half-to-even at n decimals (no scaling error).</summary>
internal static class PythonRound
{
    public static double Round(double x, int digits)
    {
        if (double.IsNaN(x) || double.IsInfinity(x) || x == 0) return x;
        long bits = BitConverter.DoubleToInt64Bits(x);
        bool negative = bits < 0;
        int exponent = (int)((bits >> 52) & 0x7FF);
        long mantissa = bits & 0xFFFFFFFFFFFFFL;
        if (exponent == 0) exponent++; else mantissa |= 1L << 52;
        exponent -= 1075; // value = mantissa · 2^exponent
        if (exponent >= 0) return x; // an integer: nothing to round at n >= 0 decimals
        var scale = BigInteger.Pow(10, digits);
        var numerator = new BigInteger(mantissa) * scale;
        var denominator = BigInteger.One << -exponent;
        var q = BigInteger.DivRem(numerator, denominator, out var r);
        var twice = r * 2;
        if (twice > denominator || (twice == denominator && !q.IsEven)) q += 1;
        double result = (double)q / (double)scale;
        return negative ? -result : result;
    }
}
