namespace ShareGPT4V.Modeling;

/// <summary>Work split into blocks that any thread may take, in any order.</summary>
internal abstract class BlockJob
{
    private long _next;
    private long _completed;
    private long _running; // threads inside Drain that may hold a block
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
        while (true)
        {
            // Counted before a block is taken, so Abort + Settled sees every thread that could still touch the buffers.
            Interlocked.Increment(ref _running);
            try
            {
                long b = Interlocked.Increment(ref _next) - 1;
                if (b >= count) return;
                RunBlock(b);
                Interlocked.Increment(ref _completed);
            }
            finally
            {
                Interlocked.Decrement(ref _running);
            }
        }
    }

    /// <summary>No block is handed out after this; blocks already taken run to their end.</summary>
    public void Abort() => Interlocked.Exchange(ref _next, long.MaxValue / 2);

    public bool IsComplete => Volatile.Read(ref _completed) == BlockCount;

    /// <summary>No thread is running a block of this job (meaningful after <see cref="Abort"/>).</summary>
    public bool IsSettled => Volatile.Read(ref _running) == 0;
}

/// <summary>
/// Persistent threads for our own CPU kernels (libtorch's pool is not reachable from .NET), as a set of teams: a
/// job runs on a free team, so two pipelines decoding at once in one process each get their threads instead of the
/// second one silently running alone. The caller works too; helpers spin briefly between jobs, because a decode step
/// issues a job every few hundred microseconds and waking a sleeping thread would cost a noticeable part of that, then
/// block so an idle model costs no CPU. A job returns, or throws, only when no thread is still inside it: the buffers
/// it reads may be freed right after.
/// </summary>
internal sealed class KernelThreads
{
    /// <summary>Teams are created on demand up to this many; beyond it callers wait for one (counted in <see cref="Waits"/>).</summary>
    public const int MaxTeams = 16;

    public static KernelThreads Shared { get; } = new();

    private readonly object _teamsLock = new();
    private volatile Team[] _teams = [];
    private long _waits;

    /// <summary>Number of teams created so far (one per concurrent caller at the peak).</summary>
    public int TeamCount => _teams.Length;

    /// <summary>How many jobs had to wait for a team because <see cref="MaxTeams"/> were all busy.</summary>
    public long Waits => Interlocked.Read(ref _waits);

    /// <summary>Runs <paramref name="job"/> on <paramref name="threads"/> threads (the caller included) and returns when it is done.</summary>
    /// <exception cref="InvalidOperationException">A block failed (the first failure is the inner exception).</exception>
    public void Run(BlockJob job, int threads)
    {
        job.Reset();
        threads = (int)Math.Min(threads, job.BlockCount);
        if (threads <= 1)
        {
            job.Drain();
            return;
        }
        foreach (var team in _teams)
            if (team.TryRun(job, threads)) return;
        Team? fresh = null;
        lock (_teamsLock)
        {
            if (_teams.Length < MaxTeams)
            {
                fresh = new Team(_teams.Length);
                _teams = [.. _teams, fresh];
            }
        }
        if (fresh is not null && fresh.TryRun(job, threads)) return;
        Interlocked.Increment(ref _waits);
        _teams[0].RunWaiting(job, threads);
    }

    private sealed class Team
    {
        private readonly object _gate = new();
        private readonly List<Helper> _helpers = new();
        private readonly int _index;
        private volatile BlockJob? _job;
        private Exception? _error;

        public Team(int index) => _index = index;

        public bool TryRun(BlockJob job, int threads)
        {
            if (!Monitor.TryEnter(_gate)) return false;
            try { RunLocked(job, threads); }
            finally { Monitor.Exit(_gate); }
            return true;
        }

        public void RunWaiting(BlockJob job, int threads)
        {
            lock (_gate) RunLocked(job, threads);
        }

        private void RunLocked(BlockJob job, int threads)
        {
            while (_helpers.Count < threads - 1) _helpers.Add(new Helper(this, _index, _helpers.Count));
            _job = job;
            for (int i = 0; i < threads - 1; i++) _helpers[i].Go.Set();
            try
            {
                job.Drain();
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref _error, e, null);
            }
            // Wait for the blocks helpers took, not for the helpers: one that another process keeps off the CPU and
            // that took nothing must not hold the step up. Spin without Sleep(1): a millisecond outlasts most jobs.
            var spin = new SpinWait();
            while (!job.IsComplete && Volatile.Read(ref _error) is null) spin.SpinOnce(sleep1Threshold: -1);
            if (Volatile.Read(ref _error) is not null)
            {
                // A block failed: hand out no more, and let every block already taken finish before returning.
                job.Abort();
                spin.Reset();
                while (!job.IsSettled) spin.SpinOnce(sleep1Threshold: -1);
            }
            _job = null;
            if (Interlocked.Exchange(ref _error, null) is { } error)
                throw new InvalidOperationException("A kernel block failed", error);
        }

        private sealed class Helper
        {
            // About 1000 spins (tens of microseconds) before blocking: covers the gap between two kernels of one step.
            public readonly ManualResetEventSlim Go = new(false, spinCount: 1000);
            private readonly Team _owner;

            public Helper(Team owner, int team, int index)
            {
                _owner = owner;
                new Thread(Loop) { IsBackground = true, Name = $"ShareGPT4V kernel {team + 1}.{index + 1}" }.Start();
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
}
