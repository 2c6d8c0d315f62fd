using System.Diagnostics;
using ShareGPT4V.Modeling;
using TorchSharp;
using static TorchSharp.torch;
using Linear = ShareGPT4V.Modeling.Linear;

namespace ShareGPT4V.Bench;

/// <summary>
/// <c>sharegpt4v-bench kernels</c>: the decode mat-vec kernel alone on the benchmark model's MLP shape (8 matrices
/// of 5632 × 2048, more than any cache), per weight storage: float32, bfloat16, and Q8_0 / Q4_0 both widened in
/// registers and with int8 dot products (the default; SHAREGPT4V_QUANT_INT8=0 turns it off). Prints GB/s of weights read and weights per second.
/// With <c>--rows</c>, float32 and bfloat16 again for several batch rows (a decode step of that many requests), with
/// the kernel's two-rows-per-load pairing on and off, in one process so the figures compare.
/// </summary>
internal static class KernelBench
{
    public static void Run(int threads, IReadOnlyList<int> batchRows, TextWriter log)
    {
        torch.set_num_threads(threads);
        const int count = 8, rows = 5632, cols = 2048, reps = 15;
        var gen = new Generator(1);
        var f32 = Enumerable.Range(0, count).Select(_ => torch.randn(new long[] { rows, cols }, generator: gen).mul_(0.02)).ToArray();
        var x = torch.randn(1, cols, generator: gen);
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
        bool saved = QuantKernels.Int8Activations;
        foreach (var format in new[] { QuantizationFormat.Q8_0, QuantizationFormat.Q4_0 })
            foreach (bool int8 in new[] { false, true })
            {
                QuantKernels.Int8Activations = int8; // read on this thread when each call starts
                Time($"{QuantizationFormats.Name(format)} {(int8 ? "int8 dot" : "registers")}", f32.Select(w => (Tensor)QuantizedWeight.Quantize(w, format)).ToArray());
                if (int8) Time($"{QuantizationFormats.Name(format)} int8 8-row", f32.Select(w => (Tensor)QuantizedWeight.Quantize(w, format, interleaved: true)).ToArray());
            }
        QuantKernels.Int8Activations = saved;
        if (batchRows.Count > 0) TimeRows(f32, batchRows, reps, log);
        Time("float32", f32);
    }

    private static void TimeRows(Tensor[] f32, IReadOnlyList<int> batchRows, int reps, TextWriter log)
    {
        var gen = new Generator(2);
        log.WriteLine($"{"weights",-9} {"rows",4} {"paired ms",10} {"unpaired ms",12} {"paired GFLOP/s",15}");
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            var ws = dtype == ScalarType.Float32 ? f32 : f32.Select(w => w.to(dtype)).ToArray();
            long weights = ws.Sum(w => w.numel());
            foreach (int rows in batchRows)
            {
                using var x = torch.randn(rows, ws[0].shape[1], generator: gen);
                double Median(bool paired)
                {
                    ShareGPT4V.Modeling.MatVec.PairRows = paired;
                    var times = new List<double>();
                    for (int r = 0; r < reps; r++)
                    {
                        var sw = Stopwatch.StartNew();
                        foreach (var w in ws) foreach (var y in ShareGPT4V.Modeling.MatVec.Run(x, [(w, null)])) y.Dispose();
                        times.Add(sw.Elapsed.TotalMilliseconds);
                    }
                    return times.OrderBy(t => t).ElementAt(times.Count / 2);
                }
                double on = Median(true), off = Median(false);
                ShareGPT4V.Modeling.MatVec.PairRows = true;
                log.WriteLine($"{(dtype == ScalarType.Float32 ? "float32" : "bfloat16"),-9} {rows,4} {on,10:F1} {off,12:F1} {2.0 * weights * rows / (on / 1e3) / 1e9,15:F1}");
            }
            if (dtype != ScalarType.Float32) foreach (var w in ws) w.Dispose();
        }
    }
}
