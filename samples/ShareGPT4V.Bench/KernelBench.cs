using System.Diagnostics;
using ShareGPT4V.Modeling;
using TorchSharp;
using static TorchSharp.torch;
using Linear = ShareGPT4V.Modeling.Linear;

namespace ShareGPT4V.Bench;

/// <summary>
/// <c>sharegpt4v-bench kernels</c>: the decode mat-vec kernel alone on the benchmark model's MLP shape (8 matrices
/// of 5632 × 2048, more than any cache), per weight storage: float32, bfloat16, and Q8_0 / Q4_0 both widened in
/// registers or with int8 dot products (SHAREGPT4V_QUANT_INT8=1). Prints GB/s of weights read and weights per second.
/// </summary>
internal static class KernelBench
{
    public static void Run(int threads, TextWriter log)
    {
        torch.set_num_threads(threads);
        const int count = 8, rows = 5632, cols = 2048, reps = 15;
        var gen = new Generator(1);
        var f32 = Enumerable.Range(0, count).Select(_ => torch.randn(new long[] { rows, cols }, generator: gen).mul_(0.02)).ToArray();
        var x = torch.randn(1, cols, generator: gen);
        string mode = Environment.GetEnvironmentVariable("SHAREGPT4V_QUANT_INT8") == "1" ? "int8 dot" : "registers";
        void Time(string name, Tensor[] ws)
        {
            long bytes = ws.Sum(w => w.numel() * w.ElementSize);
            var layers = ws.Select(w => Linear.FromTensors(w, null)).ToArray(); // the layers own the weights from here
            var times = new List<double>();
            for (int r = 0; r < reps; r++)
            {
                var sw = Stopwatch.StartNew();
                foreach (var l in layers) l.forward(x).Dispose();
                times.Add(sw.Elapsed.TotalSeconds);
            }
            foreach (var l in layers) l.Dispose();
            double best = times.Min(), median = times.OrderBy(t => t).ElementAt(times.Count / 2);
            log.WriteLine($"{name,-22} {bytes / median / 1e9,7:F1} GB/s median ({bytes / best / 1e9:F1} best)  {(double)count * rows * cols / median / 1e9,6:F2} G weights/s");
        }
        Time("bfloat16", f32.Select(w => w.to(ScalarType.BFloat16)).ToArray());
        foreach (var format in new[] { QuantizationFormat.Q8_0, QuantizationFormat.Q4_0 })
            Time($"{QuantizationFormats.Name(format)} {mode}", f32.Select(w => (Tensor)QuantizedWeight.Quantize(w, format)).ToArray());
        Time("float32", f32);
    }
}
