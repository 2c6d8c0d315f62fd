using System.Collections.Concurrent;
using ShareGPT4V.Modeling;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Modeling;

/// <summary>The kernel thread teams: failures never leave a thread inside a job, concurrent callers each get threads.</summary>
public class KernelThreadsTests
{
    /// <summary>Blocks that take a while and record who ran them; one block may fail on a chosen kind of thread.</summary>
    private sealed class ProbeJob(int blocks, Func<long, bool>? failOn = null) : BlockJob
    {
        private int _running;
        public volatile bool Returned;     // set by the test once Run has returned or thrown
        public int StartedAfterReturn;     // blocks that began after that: a use-after-free in a real kernel
        public int RunningWhenReturned = -1;
        public readonly ConcurrentDictionary<int, int> Threads = new();

        public override long BlockCount => blocks;

        protected override void RunBlock(long block)
        {
            if (Returned) Interlocked.Increment(ref StartedAfterReturn);
            Interlocked.Increment(ref _running);
            try
            {
                Threads.AddOrUpdate(Environment.CurrentManagedThreadId, 1, (_, n) => n + 1);
                if (failOn?.Invoke(block) == true) throw new IOException($"block {block} failed on purpose");
                Thread.Sleep(3);
            }
            finally
            {
                Interlocked.Decrement(ref _running);
            }
        }

        public void MarkReturned()
        {
            RunningWhenReturned = Volatile.Read(ref _running);
            Returned = true;
        }
    }

    private static bool OnHelper() => Thread.CurrentThread.Name?.StartsWith("ShareGPT4V kernel", StringComparison.Ordinal) == true;

    [Theory]
    [InlineData(true)]   // a helper thread's block fails
    [InlineData(false)]  // the caller's own block fails
    public void AFailedBlockReturnsOnlyWhenNoThreadIsInsideTheJob(bool failOnHelper)
    {
        var pool = new KernelThreads();
        for (int attempt = 0; attempt < 5; attempt++)
        {
            int failures = 0;
            var job = new ProbeJob(200, b => b >= 4 && (failOnHelper ? OnHelper() : !OnHelper()) && Interlocked.Increment(ref failures) == 1);
            var e = Assert.Throws<InvalidOperationException>(() => pool.Run(job, 3));
            job.MarkReturned();
            Assert.IsType<IOException>(e.InnerException);
            Assert.Equal(0, job.RunningWhenReturned);
            Thread.Sleep(20);
            Assert.Equal(0, job.StartedAfterReturn);
        }
        // The team is still usable after failures.
        var ok = new ProbeJob(20);
        pool.Run(ok, 2);
        Assert.Equal(20, ok.Threads.Values.Sum());
    }

    [Fact]
    public void TwoConcurrentCallersEachGetTheirOwnThreads()
    {
        var pool = new KernelThreads();
        var jobs = new[] { new ProbeJob(40), new ProbeJob(40) };
        using var start = new Barrier(2);
        var tasks = jobs.Select(j => Task.Factory.StartNew(() => { start.SignalAndWait(); pool.Run(j, 2); },
            TaskCreationOptions.LongRunning)).ToArray();
        Task.WaitAll(tasks);
        // Before teams, the second caller found the only team busy and ran its job alone, on one thread.
        foreach (var j in jobs) Assert.True(j.Threads.Count >= 2, $"a job ran on {j.Threads.Count} thread(s)");
        Assert.True(pool.TeamCount >= 1);
        Assert.Equal(0, pool.Waits);
    }

    [Fact]
    public void DecodeAttentionDeclinesACacheOverTwoGiB()
    {
        using var scope = NewDisposeScope();
        var q = torch.zeros(1, 8, 1, 64);
        var small = torch.zeros(1, 8, 16, 64);
        Assert.True(DecodeAttention.Applies(q, small, null));
        // 1 x 32 x 163840 x 128 float32 = 2.5 GiB of address space; torch.empty does not touch the pages.
        var huge = torch.empty(new long[] { 1, 32, 163840, 128 }, ScalarType.Float32);
        Assert.False(DecodeAttention.Applies(torch.zeros(1, 32, 1, 128), huge, null));
    }
}
