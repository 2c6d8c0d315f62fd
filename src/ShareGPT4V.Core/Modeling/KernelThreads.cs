namespace ShareGPT4V.Modeling;

/// <summary>Work split into blocks that any thread may take, in any order.</summary>
internal abstract class BlockJob
{
    private long _next;
    private long _completed;
    public abstract long BlockCount { get; }
    protected abstract void RunBlock(long block);

    public void Reset()
    {
        Volatile.Write(ref _next, 0);
        Volatile.Write(ref _completed, 0);
    }

    /// <summary>Takes blocks until none are left. Taking them one by one (not a fixed share each) keeps a thread that
    /// another process slows down from holding everyone up.</summary>
    public void Drain()
    {
        long count = BlockCount;
        for (long b = Interlocked.Increment(ref _next) - 1; b < count; b = Interlocked.Increment(ref _next) - 1)
        {
            RunBlock(b);
            Interlocked.Increment(ref _completed);
        }
    }

    public bool IsComplete => Volatile.Read(ref _completed) == BlockCount;
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
    private volatile BlockJob? _job;
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
            for (int i = 0; i < threads - 1; i++) _helpers[i].Go.Set();
            job.Drain();
            // Wait for the blocks helpers took, not for the helpers: one that another process keeps off the CPU and
            // that took nothing must not hold the step up. Spin without Sleep(1): a millisecond outlasts most jobs.
            var spin = new SpinWait();
            while (!job.IsComplete && Volatile.Read(ref _error) is null) spin.SpinOnce(sleep1Threshold: -1);
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
                // A late wake-up may find the next job (or none): either way it only takes blocks nobody has taken.
                try { _owner._job?.Drain(); }
                catch (Exception e) { Interlocked.CompareExchange(ref _owner._error, e, null); }
            }
        }
    }
}
