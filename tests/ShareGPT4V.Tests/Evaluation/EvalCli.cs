using System.Diagnostics;
using Xunit;

namespace ShareGPT4V.Tests.Evaluation;

/// <summary>Runs the <c>sharegpt4v</c> CLI as a process, as a user does.</summary>
internal static class EvalCli
{
    public sealed record Result(int ExitCode, string Out, string Err);

    public static Result Run(params string[] args) => RunWithEnvironment(null, args);

    public static Result RunWithEnvironment(IReadOnlyDictionary<string, string>? environment, params string[] args)
    {
        using var p = Process.Start(Samples.CliProcess.StartInfo(args, environment: environment))!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(120_000))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail("the CLI did not finish within 2 minutes");
        }
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }
}
