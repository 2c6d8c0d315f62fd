using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Bench;

/// <summary>
/// The machine's own limits, measured with the thread count of the run: read bandwidth (a read-only streaming sum,
/// which unlike a copy test does not pay for write-allocate traffic), the fp32 FMA peak (independent vector FMAs on
/// registers only) and the GEMM rate of the matmul inference uses. Each figure is the median of several trials, so a
/// burst of contention from other work moves it less than it moves a single reading.
/// </summary>
internal static class MachineLimits
{
    /// <summary>Median GB/s (1e9 bytes) of <paramref name="threads"/> threads summing disjoint slices of one buffer.</summary>
    public static unsafe double ReadBandwidthGBs(int threads, long bytes, int trials = 9)
    {
        const long Align = 2 << 20;
        bytes = Math.Max(bytes / (threads * 256L) * (threads * 256L), threads * 256L);
        byte* buffer = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, (nuint)Align);
        try
        {
            // Write every page so the timed passes measure memory, not page faults; distinct values, so no page is
            // identical to another (memory deduplication would otherwise let one physical page serve many).
            float* values = (float*)buffer;
            for (long i = 0; i < bytes / sizeof(float); i++) values[i] = i;
            long slice = bytes / threads;
            var seconds = RunTimed(threads, trials, t => SumFloats((float*)(buffer + t * slice), slice / sizeof(float)));
            return Median(seconds.Select(s => bytes / s / 1e9));
        }
        finally
        {
            NativeMemory.AlignedFree(buffer);
        }
    }

    /// <summary>Median GFLOP/s of <paramref name="threads"/> threads each running a register-only FMA loop.</summary>
    public static double FmaPeakGFlops(int threads, double secondsPerTrial = 0.25, int trials = 5, int? bits = null)
    {
        int width = bits ?? FmaVectorBits;
        // Calibrate the iteration count on one thread so each trial lasts about secondsPerTrial.
        long iterations = 1 << 16;
        while (true)
        {
            var sw = Stopwatch.StartNew();
            FmaLoop(iterations, width);
            if (sw.Elapsed.TotalSeconds > secondsPerTrial / 4 || iterations > 1L << 40) break;
            iterations *= 2;
        }
        iterations *= 4;
        var seconds = RunTimed(threads, trials, _ => FmaLoop(iterations, width));
        double flops = 12.0 * 2 * (width / 32) * iterations * threads; // 12 accumulators hide the FMA latency
        return Median(seconds.Select(s => flops / s / 1e9));
    }

    /// <summary>Width of the vectors the FMA loop uses (512, 256 or 128 bits).</summary>
    public static int FmaVectorBits =>
        Vector512.IsHardwareAccelerated && Avx512F.IsSupported ? 512 : Fma.IsSupported ? 256 : 128;

    /// <summary>The vector widths this machine can run the FMA loop at.</summary>
    public static IEnumerable<int> AvailableFmaWidths =>
        new[] { 512, 256, 128 }.Where(b => b <= FmaVectorBits || (b == 256 && Fma.IsSupported));

    private static float FmaLoop(long iterations, int bits) => bits switch
    {
        512 => Fma512(iterations),
        256 => Fma256(iterations),
        _ => Fma128(iterations),
    };

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Fma512(long n)
    {
        var m = Vector512.Create(0.999999f);
        var c = Vector512.Create(1e-7f);
        Vector512<float> a0 = Vector512.Create(1f), a1 = a0 + c, a2 = a1 + c, a3 = a2 + c, a4 = a3 + c, a5 = a4 + c,
            a6 = a5 + c, a7 = a6 + c, a8 = a7 + c, a9 = a8 + c, a10 = a9 + c, a11 = a10 + c;
        for (long i = 0; i < n; i++)
        {
            a0 = Avx512F.FusedMultiplyAdd(a0, m, c); a1 = Avx512F.FusedMultiplyAdd(a1, m, c);
            a2 = Avx512F.FusedMultiplyAdd(a2, m, c); a3 = Avx512F.FusedMultiplyAdd(a3, m, c);
            a4 = Avx512F.FusedMultiplyAdd(a4, m, c); a5 = Avx512F.FusedMultiplyAdd(a5, m, c);
            a6 = Avx512F.FusedMultiplyAdd(a6, m, c); a7 = Avx512F.FusedMultiplyAdd(a7, m, c);
            a8 = Avx512F.FusedMultiplyAdd(a8, m, c); a9 = Avx512F.FusedMultiplyAdd(a9, m, c);
            a10 = Avx512F.FusedMultiplyAdd(a10, m, c); a11 = Avx512F.FusedMultiplyAdd(a11, m, c);
        }
        return Vector512.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Fma256(long n)
    {
        var m = Vector256.Create(0.999999f);
        var c = Vector256.Create(1e-7f);
        Vector256<float> a0 = Vector256.Create(1f), a1 = a0 + c, a2 = a1 + c, a3 = a2 + c, a4 = a3 + c, a5 = a4 + c,
            a6 = a5 + c, a7 = a6 + c, a8 = a7 + c, a9 = a8 + c, a10 = a9 + c, a11 = a10 + c;
        for (long i = 0; i < n; i++)
        {
            a0 = Fma.MultiplyAdd(a0, m, c); a1 = Fma.MultiplyAdd(a1, m, c); a2 = Fma.MultiplyAdd(a2, m, c);
            a3 = Fma.MultiplyAdd(a3, m, c); a4 = Fma.MultiplyAdd(a4, m, c); a5 = Fma.MultiplyAdd(a5, m, c);
            a6 = Fma.MultiplyAdd(a6, m, c); a7 = Fma.MultiplyAdd(a7, m, c); a8 = Fma.MultiplyAdd(a8, m, c);
            a9 = Fma.MultiplyAdd(a9, m, c); a10 = Fma.MultiplyAdd(a10, m, c); a11 = Fma.MultiplyAdd(a11, m, c);
        }
        return Vector256.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11);
    }

    // Without FMA instructions: a multiply and an add per element (counted as the 2 FLOPs of one multiply-add).
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Fma128(long n)
    {
        var m = Vector128.Create(0.999999f);
        var c = Vector128.Create(1e-7f);
        Vector128<float> a0 = Vector128.Create(1f), a1 = a0 + c, a2 = a1 + c, a3 = a2 + c, a4 = a3 + c, a5 = a4 + c,
            a6 = a5 + c, a7 = a6 + c, a8 = a7 + c, a9 = a8 + c, a10 = a9 + c, a11 = a10 + c;
        for (long i = 0; i < n; i++)
        {
            a0 = a0 * m + c; a1 = a1 * m + c; a2 = a2 * m + c; a3 = a3 * m + c; a4 = a4 * m + c; a5 = a5 * m + c;
            a6 = a6 * m + c; a7 = a7 * m + c; a8 = a8 * m + c; a9 = a9 * m + c; a10 = a10 * m + c; a11 = a11 * m + c;
        }
        return Vector128.Sum(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static unsafe float SumFloats(float* p, long n)
    {
        if (Vector256.IsHardwareAccelerated)
        {
            Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
            long i = 0;
            for (; i + 32 <= n; i += 32)
            {
                a0 += Vector256.Load(p + i);
                a1 += Vector256.Load(p + i + 8);
                a2 += Vector256.Load(p + i + 16);
                a3 += Vector256.Load(p + i + 24);
            }
            float s = Vector256.Sum(a0 + a1 + a2 + a3);
            for (; i < n; i++) s += p[i];
            return s;
        }
        Vector128<float> b0 = default, b1 = default, b2 = default, b3 = default;
        long j = 0;
        for (; j + 16 <= n; j += 16)
        {
            b0 += Vector128.Load(p + j);
            b1 += Vector128.Load(p + j + 4);
            b2 += Vector128.Load(p + j + 8);
            b3 += Vector128.Load(p + j + 12);
        }
        float r = Vector128.Sum(b0 + b1 + b2 + b3);
        for (; j < n; j++) r += p[j];
        return r;
    }

    /// <summary>
    /// GFLOP/s of the linear layer inference runs for a prefill: [rows, inFeatures] × [outFeatures, inFeatures]ᵀ
    /// through libtorch at its current thread count, weights in <paramref name="weightType"/> and activations in the
    /// precision the model computes in on that device (float32 on the CPU). Median of <paramref name="trials"/> after one
    /// warm-up call.
    /// </summary>
    public static double GemmGFlops(long rows, long inFeatures, long outFeatures, ScalarType weightType, Device device, int trials = 7)
    {
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        var compute = ShareGPT4V.Modeling.ComputePrecision.For(weightType, device);
        var x = torch.rand(new[] { rows, inFeatures }, compute, device) - 0.5;
        var w = (torch.rand(new[] { outFeatures, inFeatures }, ScalarType.Float32, device) - 0.5).to(weightType);
        using var linear = ShareGPT4V.Modeling.Linear.FromTensors(w, null);
        linear.forward(x).Dispose();
        // A GPU runs this shape in tens of microseconds: time a run of calls, waiting for the device only at its end
        // (copying the output back would time the host link instead).
        bool cuda = device.type == DeviceType.CUDA;
        int calls = cuda ? 20 : 1;
        if (cuda) torch.cuda.synchronize(device);
        var times = new List<double>();
        for (int i = 0; i < trials; i++)
        {
            var sw = Stopwatch.StartNew();
            for (int c = 0; c < calls; c++) linear.forward(x).Dispose();
            if (cuda) torch.cuda.synchronize(device);
            times.Add(sw.Elapsed.TotalSeconds / calls);
        }
        return 2.0 * rows * inFeatures * outFeatures / Median(times) / 1e9;
    }

    /// <summary>
    /// GB/s at which the decode path streams weights: one-row linear layers (the shape of a decode step) over about
    /// <paramref name="bytes"/> of <paramref name="weightType"/> weights, far more than the caches hold. Compared with
    /// <see cref="ReadBandwidthGBs"/>, it shows how much of the memory bandwidth the kernel itself reaches.
    /// </summary>
    public static double MatVecGBs(long bytes, ScalarType weightType, int trials = 7)
    {
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        const long Rows = 4096, Columns = 4096;
        long each = Rows * Columns * ShareGPT4V.Checkpoints.SafeTensorsFile.ElementSize(weightType);
        int count = (int)Math.Max(2, bytes / each);
        var layers = new List<ShareGPT4V.Modeling.Linear>();
        for (int i = 0; i < count; i++)
        {
            // Free the float32 temporaries at once: only the weights themselves may stay resident.
            using var inner = NewDisposeScope();
            var w = (torch.rand(Rows, Columns) - 0.5).to(weightType).DetachFromDisposeScope();
            layers.Add(ShareGPT4V.Modeling.Linear.FromTensors(w, null, ScalarType.Float32));
        }
        var x = torch.rand(1, Columns) - 0.5;
        var times = new List<double>();
        for (int i = 0; i < trials + 1; i++)
        {
            var sw = Stopwatch.StartNew();
            foreach (var l in layers) l.forward(x).Dispose();
            if (i > 0) times.Add(sw.Elapsed.TotalSeconds);
        }
        foreach (var l in layers) l.Dispose();
        return count * (double)each / Median(times) / 1e9;
    }

    /// <summary>Runs <paramref name="body"/>(thread index) on <paramref name="threads"/> threads at once, <paramref name="trials"/> times; seconds per trial.</summary>
    private static List<double> RunTimed(int threads, int trials, Func<int, float> body)
    {
        var results = new List<double>();
        using var start = new Barrier(threads + 1);
        using var done = new Barrier(threads + 1);
        float sink = 0;
        var workers = new Thread[threads];
        for (int t = 0; t < threads; t++)
        {
            int index = t;
            workers[t] = new Thread(() =>
            {
                for (int trial = 0; trial < trials + 1; trial++)
                {
                    start.SignalAndWait();
                    float r = body(index);
                    Interlocked.Exchange(ref sink, r); // keep the result alive so the loop is not removed
                    done.SignalAndWait();
                }
            }) { IsBackground = true, Name = "limits " + t };
            workers[t].Start();
        }
        for (int trial = 0; trial < trials + 1; trial++)
        {
            start.SignalAndWait();
            var sw = Stopwatch.StartNew();
            done.SignalAndWait();
            if (trial > 0) results.Add(sw.Elapsed.TotalSeconds); // the first trial warms caches and the JIT
        }
        foreach (var w in workers) w.Join();
        GC.KeepAlive(sink);
        return results;
    }

    public static double Median(IEnumerable<double> values)
    {
        var v = values.OrderBy(x => x).ToList();
        if (v.Count == 0) return double.NaN;
        return v.Count % 2 == 1 ? v[v.Count / 2] : (v[v.Count / 2 - 1] + v[v.Count / 2]) / 2;
    }
}
