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
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        psi.Environment.Remove("SHAREGPT4V_LIBTORCH_DIR");
        psi.Environment.Remove("JOB_COMPLETION_INDEX");
        psi.Environment.Remove("JOB_COMPLETIONS");
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "sharegpt4v.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
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
