using System.Diagnostics;
using ShareGPT4V.Fuzzing;
using SharpFuzz;

// Entry point of the fuzz harness; fuzz/run.sh drives it. Commands:
//   afl <target> <fixtures>                      run under afl-fuzz (SharpFuzz, out-of-process so native crashes count)
//   seeds <fixtures> <out-dir> [target...]       write the seed corpora (small seeds only) to <out-dir>/<target>/
//   mutate <target> <fixtures> <count> [seed]    seeded mutation fuzz without afl-fuzz; prints execs, outcomes, time
//   replay <target> <fixtures> <file|dir>...     run saved inputs (e.g. afl's crashes/) and print each outcome

return args.Length == 0 ? Usage() : args[0] switch
{
    "afl" when args.Length == 3 => Afl(args[1], args[2]),
    "seeds" when args.Length >= 3 => Seeds(args[1], args[2], args.Skip(3).ToArray()),
    "mutate" when args.Length is 4 or 5 => Mutate(args[1], args[2], int.Parse(args[3]), args.Length == 5 ? int.Parse(args[4]) : 1),
    "replay" when args.Length >= 4 => Replay(args[1], args[2], args.Skip(3)),
    _ => Usage(),
};

static int Usage()
{
    Console.Error.WriteLine("usage: ShareGPT4V.Fuzz afl <target> <fixtures> | seeds <fixtures> <out-dir> [target...] | " +
                            "mutate <target> <fixtures> <count> [seed] | replay <target> <fixtures> <file|dir>...");
    Console.Error.WriteLine("targets: " + string.Join(", ", FuzzTargets.Names));
    return 2;
}

static int Afl(string target, string fixtures)
{
    var work = Path.Combine(Path.GetTempPath(), $"sgpt4v-afl-{target}-{Environment.ProcessId}");
    using var targets = new FuzzTargets(fixtures, work);
    Fuzzer.OutOfProcess.Run(stream =>
    {
        using var ms = new MemoryStream();
        stream.CopyTo(ms);
        targets.Run(target, ms.ToArray());
    });
    return 0;
}

static int Seeds(string fixtures, string outDir, string[] targets)
{
    SeedCorpus.WriteAll(fixtures, outDir, targets.Length > 0 ? targets : FuzzTargets.Names, small: true);
    return 0;
}

static int Mutate(string target, string fixtures, int count, int seed)
{
    using var targets = new FuzzTargets(fixtures);
    var seeds = SeedCorpus.For(target, fixtures).Select(s => s.Data).ToList();
    var mutator = new Mutator(seed);
    var rng = new Random(seed);
    int accepted = 0, refused = 0, findings = 0;
    var sw = Stopwatch.StartNew();
    for (int i = 0; i < count; i++)
    {
        var input = mutator.Mutate(seeds[rng.Next(seeds.Count)], seeds);
        try
        {
            if (targets.Run(target, input) == FuzzOutcome.Accepted) accepted++; else refused++;
        }
        catch (Exception e)
        {
            findings++;
            var file = Path.Combine(Path.GetTempPath(), $"sgpt4v-finding-{target}-{seed}-{i}.bin");
            File.WriteAllBytes(file, input);
            Console.WriteLine($"FINDING case {i}: {e.GetType().Name}: {e.Message} (input saved to {file})");
        }
    }
    Console.WriteLine($"target {target}: {count} execs, {accepted} accepted, {refused} refused, {findings} findings, {sw.Elapsed.TotalSeconds:F1} s");
    return findings == 0 ? 0 : 1;
}

static int Replay(string target, string fixtures, IEnumerable<string> paths)
{
    using var targets = new FuzzTargets(fixtures);
    int findings = 0;
    foreach (var file in paths.SelectMany(p => Directory.Exists(p) ? (IEnumerable<string>)Directory.GetFiles(p).Order() : new[] { p }))
    {
        if (Path.GetFileName(file) == "README.txt") continue;
        var data = File.ReadAllBytes(file);
        try { Console.WriteLine($"{file}: {targets.Run(target, data)}"); }
        catch (Exception e)
        {
            findings++;
            Console.WriteLine($"{file}: FINDING {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
        }
    }
    return findings == 0 ? 0 : 1;
}
