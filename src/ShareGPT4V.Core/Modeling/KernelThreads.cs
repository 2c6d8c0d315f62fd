namespace ShareGPT4V.Modeling;

/// <summary>Work split into blocks that any thread may take, in any order.</summary>
internal abstract class BlockJob
{
    private long _next;
    public abstract long BlockCount { get; }
    protected abstract void RunBlock(long block);

    public void Reset() => Volatile.Write(ref _next, 0);

    /// <summary>Takes blocks until none are left. Taking them one by one (not a fixed share each) keeps a thread that
    /// another process slows down from holding everyone up.</summary>
    public void Drain()
    {
        long count = BlockCount;
        for (long b = Interlocked.Increment(ref _next) - 1; b < count; b = Interlocked.Increment(ref _next) - 1)
            RunBlock(b);
    }
}

/// <summary>
/// A small team of persistent threads for our own CPU kernels (libtorch's pool is not reachable from .NET). The
/// caller works too; helpers spin briefly between jobs, because a decode step issues a job every few hundred
/// microseconds and waking a sleeping thread would cost a noticeable part of that, then block so an idle model
/// costs no CPU. Only one job runs at a time; a caller that finds the team busy runs its job alone.
/// </summary>
internal sealed class KernelThreads
{
    public static KernelThreads Shared { get; } = new();

    private readonly object _gate = new();
    private readonly List<Helper> _helpers = new();
    private BlockJob? _job;
    private int _pending;
    private Exception? _error;

    /// <summary>Runs <paramref name="job"/> on <paramref name="threads"/> threads (the caller included) and returns when it is done.</summary>
    public void Run(BlockJob job, int threads)
    {
        job.Reset();
        threads = (int)Math.Min(threads, job.BlockCount);
        if (threads <= 1 || !Monitor.TryEnter(_gate))
        {
            job.Drain();
            return;
        }
        try
        {
            while (_helpers.Count < threads - 1) _helpers.Add(new Helper(this, _helpers.Count));
            _job = job;
            Volatile.Write(ref _pending, threads - 1);
            for (int i = 0; i < threads - 1; i++) _helpers[i].Go.Set();
            job.Drain();
            // Spin (no Sleep(1): a millisecond is longer than most jobs) until every helper has left the job.
            var spin = new SpinWait();
            while (Volatile.Read(ref _pending) != 0) spin.SpinOnce(sleep1Threshold: -1);
            _job = null;
            if (Interlocked.Exchange(ref _error, null) is { } e)
                throw new InvalidOperationException("A kernel thread failed", e);
        }
        finally
        {
            Monitor.Exit(_gate);
        }
    }

    private sealed class Helper
    {
        // About 1000 spins (tens of microseconds) before blocking: covers the gap between two kernels of one step.
        public readonly ManualResetEventSlim Go = new(false, spinCount: 1000);
        private readonly KernelThreads _owner;

        public Helper(KernelThreads owner, int index)
        {
            _owner = owner;
            new Thread(Loop) { IsBackground = true, Name = $"ShareGPT4V kernel {index + 1}" }.Start();
        }

        private void Loop()
        {
            while (true)
            {
                Go.Wait();
                Go.Reset();
                try { _owner._job?.Drain(); }
                catch (Exception e) { Interlocked.CompareExchange(ref _owner._error, e, null); }
                finally { Interlocked.Decrement(ref _owner._pending); }
            }
        }
    }
}
