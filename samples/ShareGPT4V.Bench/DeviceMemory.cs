using System.Diagnostics;
using ShareGPT4V.Cuda;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Bench;

/// <summary>
/// Device memory in use as the driver sees it (the whole device: this process's CUDA context, libtorch's cached
/// blocks and anyone else's allocations), read before the load and then every 10 ms on a background thread, keeping
/// the peak. TorchSharp exposes no allocator statistics, so this is the reading there is; the GPU machine runs one job.
/// </summary>
internal sealed class DeviceMemorySampler : IDisposable
{
    private readonly int _index;
    private readonly Thread _thread;
    private volatile bool _stop;
    private long _peak;

    public DeviceMemorySampler(int index)
    {
        _index = index;
        BeforeBytes = UsedBytes(index);
        _peak = BeforeBytes;
        _thread = new Thread(Loop) { IsBackground = true, Name = "device memory sampler" };
        _thread.Start();
    }

    /// <summary>Bytes in use on the device when sampling began (before the model was loaded).</summary>
    public long BeforeBytes { get; }

    /// <summary>The largest reading so far, this instant's included.</summary>
    public long PeakBytes
    {
        get
        {
            Observe(UsedBytes(_index));
            return Interlocked.Read(ref _peak);
        }
    }

    public static long UsedBytes(int index)
    {
        var (free, total) = CudaDriver.GetMemoryInfo(index);
        return total - free;
    }

    private void Observe(long used)
    {
        long seen;
        while (used > (seen = Interlocked.Read(ref _peak)) && Interlocked.CompareExchange(ref _peak, used, seen) != seen) { }
    }

    private void Loop()
    {
        while (!_stop)
        {
            Observe(UsedBytes(_index));
            Thread.Sleep(10);
        }
    }

    /// <summary>Stops sampling (idempotent); <see cref="PeakBytes"/> keeps the peak seen.</summary>
    public void Stop()
    {
        _stop = true;
        if (_thread.IsAlive) _thread.Join();
    }

    public void Dispose() => Stop();
}

/// <summary>Limits of a CUDA device measured through libtorch, as the bench's CPU limits are for the CPU.</summary>
internal static class DeviceLimits
{
    /// <summary>
    /// GB/s (1e9 bytes) of a device-to-device copy between two buffers of <paramref name="bytes"/> each, bytes read plus
    /// bytes written: the memory traffic a decode step's weight reads compete for. Median of 10 after 3 warm-up copies.
    /// </summary>
    public static double CopyGBs(Device device, long bytes)
    {
        using var scope = NewDisposeScope();
        long n = Math.Max(1, bytes / 2); // float16 elements
        var src = torch.randn(n, ScalarType.Float16, device);
        var dst = torch.empty(n, ScalarType.Float16, device);
        for (int i = 0; i < 3; i++) dst.copy_(src);
        torch.cuda.synchronize(device);
        var times = new List<double>();
        for (int i = 0; i < 10; i++)
        {
            var sw = Stopwatch.StartNew();
            dst.copy_(src);
            torch.cuda.synchronize(device);
            times.Add(sw.Elapsed.TotalSeconds);
        }
        return 2.0 * n * 2 / MachineLimits.Median(times) / 1e9;
    }
}
