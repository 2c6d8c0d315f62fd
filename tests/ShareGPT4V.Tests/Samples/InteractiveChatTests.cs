using System.Diagnostics;
using ShareGPT4V.Tests.Oracle;
using Xunit;

namespace ShareGPT4V.Tests.Samples;

/// <summary>
/// The interactive <c>chat</c> loop, driven through standard input as a script and, for Ctrl+C, with a real SIGINT:
/// slash commands, images checked when attached, context overflow, and a Ctrl+C at the prompt.
/// </summary>
public sealed class InteractiveChatTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("sgpt4v-chat-").FullName;
    private readonly GoldenCase _case = GoldenCase.Get("hf_llama2vocab");

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private Process Start(params string[] extra)
    {
        var psi = CliProcess.StartInfo(
            new[] { "chat", "--model", _case.ModelPath, "--template", "llava_v1", "--max-new-tokens", "4", "--temperature", "0" }.Concat(extra), input: true);
        // A test run started in the background by a non-interactive shell ignores SIGINT, and so would the chat it starts
        // (.NET keeps a signal that was ignored at startup ignored): give the chat SIGINT's default back, as a terminal
        // session would, through coreutils' env.
        if (SigIntIgnored() == true && File.Exists("/usr/bin/env"))
        {
            psi.ArgumentList.Insert(0, psi.FileName);
            psi.ArgumentList.Insert(0, "--default-signal=INT");
            psi.FileName = "/usr/bin/env";
        }
        return Process.Start(psi)!;
    }

    private (int Exit, string Out, string Err) Script(string stdin, params string[] extra)
    {
        using var p = Start(extra);
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.StandardInput.Write(stdin);
        p.StandardInput.Close();
        if (!p.WaitForExit(120_000)) { p.Kill(entireProcessTree: true); Assert.Fail("chat did not finish within 2 minutes"); }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    private static int Answers(string stdout) => stdout.Count(c => c == '\n');

    [Fact]
    public void AnUnknownCommandIsNotSentToTheModelAndDoubleSlashSendsText()
    {
        var r = Script("/bogus\n//bogus is a word here\n/exit\n");
        Assert.Equal(0, r.Exit);
        Assert.Contains("Unknown command '/bogus'", r.Err);
        Assert.Equal(1, Answers(r.Out)); // only the // line was a turn
    }

    [Fact]
    public void AnImageIsCheckedWhenAttachedAndResetSaysSo()
    {
        var fake = Path.Combine(_dir, "fake.png");
        File.WriteAllText(fake, "this is not a picture");
        var good = Path.Combine(_case.Dir, "image2.png");
        var r = Script($"/image {fake}\n/image {Path.Combine(_dir, "missing.png")}\n/image {good}\nWhat is this?\n/reset\n/exit\n");
        Assert.Equal(0, r.Exit);
        var err = r.Err.Split('\n');
        Assert.Contains(err, l => l.StartsWith("error:") && l.Contains("fake.png")); // refused at /image, before any turn
        Assert.Contains(err, l => l.Contains("No such file") && l.Contains("missing.png"));
        Assert.Contains(err, l => l.Contains("image2.png attached"));
        Assert.DoesNotContain(err, l => l.Contains("fake.png attached"));
        Assert.Contains("(conversation cleared)", r.Err);
        Assert.Equal(1, Answers(r.Out));
    }

    [Fact]
    public void AConversationThatOutgrowsTheContextDropsItsOldestTurnsInsteadOfFailingEveryTurn()
    {
        var turns = string.Concat(Enumerable.Range(1, 6).Select(i => $"Tell me something about the number {i} please.\n"));
        var r = Script(turns + "/exit\n", "--context-length", "96");
        Assert.Equal(0, r.Exit);
        Assert.Equal(6, Answers(r.Out));
        Assert.Contains("(the oldest turn was dropped to fit the context window)", r.Err);
        Assert.DoesNotContain("error:", r.Err);
        Assert.DoesNotContain("Overflow", r.Err); // no advice about options the CLI does not have
    }

    [Fact]
    public async Task CtrlCAtThePromptOnlyHintsAndLaterAnswersAreNotStopped()
    {
        using var p = Start();
        var err = new System.Text.StringBuilder();
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (err) err.AppendLine(e.Data); };
        p.BeginErrorReadLine();
        string Err() { lock (err) return err.ToString(); }
        p.StandardInput.WriteLine("What is the capital of France?");
        p.StandardInput.Flush();
        var first = await p.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromMinutes(2));
        Assert.NotNull(first);
        // Only a Ctrl+C that finds the chat waiting at the prompt prints the hint; one that lands while the finished
        // answer is being wrapped up is harmless. Send until the hint shows (a loaded machine can be slow to get there).
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(1);
        while (!Err().Contains("(Ctrl+C again quits") && DateTime.UtcNow < deadline)
        {
            using (var kill = Process.Start("kill", $"-INT {p.Id}")) await kill!.WaitForExitAsync();
            for (int i = 0; i < 30 && !Err().Contains("(Ctrl+C again quits"); i++) await Task.Delay(100);
        }
        // On failure, say what the chat did instead (its whole stderr, whether it is still running), and whether this
        // process ignores SIGINT: a test run started in the background by a non-interactive shell (`cmd &`) does, and
        // every process it starts inherits that, the chat included.
        Assert.True(Err().Contains("(Ctrl+C again quits", StringComparison.Ordinal),
            $"no hint after a minute of Ctrl+C; first answer line '{first}', chat {(p.HasExited ? $"exited with {p.ExitCode}" : "still running")}, " +
            $"SIGINT ignored by the test process: {SigIntIgnored()}, stderr:\n{Err()}");
        p.StandardInput.WriteLine("And what about Italy?");
        p.StandardInput.WriteLine("/exit");
        p.StandardInput.Close();
        var rest = await p.StandardOutput.ReadToEndAsync().WaitAsync(TimeSpan.FromMinutes(2));
        await p.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(2));
        Assert.Equal(0, p.ExitCode);
        Assert.DoesNotContain("[stopped]", Err());
        Assert.Equal(1, Answers(rest));
    }

    /// <summary>Bit 2 (SIGINT) of the SigIgn mask in /proc/self/status; null where there is no /proc.</summary>
    private static bool? SigIntIgnored()
    {
        try
        {
            var line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("SigIgn:", StringComparison.Ordinal));
            return line is null ? null : (Convert.ToUInt64(line["SigIgn:".Length..].Trim(), 16) & (1UL << 1)) != 0;
        }
        catch (IOException) { return null; }
    }
}
