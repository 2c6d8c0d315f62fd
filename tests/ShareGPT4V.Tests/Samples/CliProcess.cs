using System.Diagnostics;

namespace ShareGPT4V.Tests.Samples;

/// <summary>How the tests start the <c>sharegpt4v</c> CLI as a process, the way a user runs it.</summary>
internal static class CliProcess
{
    /// <summary>
    /// Output and error redirected (input too when <paramref name="input"/>); the app's own libtorch and no shard, whatever
    /// the test machine's environment sets; then <paramref name="environment"/>.
    /// </summary>
    public static ProcessStartInfo StartInfo(IEnumerable<string> args, bool input = false, IEnumerable<KeyValuePair<string, string>>? environment = null)
    {
        var psi = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = input, UseShellExecute = false,
        };
        foreach (var name in new[] { "SHAREGPT4V_LIBTORCH_DIR", "JOB_COMPLETION_INDEX", "JOB_COMPLETIONS" }) psi.Environment.Remove(name);
        foreach (var (k, v) in environment ?? []) psi.Environment[k] = v;
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "sharegpt4v.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        return psi;
    }
}
