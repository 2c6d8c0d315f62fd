namespace ShareGPT4V.Cli;

/// <summary>
/// Ctrl+C handling: while an operation started with <see cref="ForOperation"/> runs, Ctrl+C cancels just that
/// operation (a chat answer). Otherwise it cancels <see cref="Process"/>, and a second Ctrl+C ends the process; except
/// while <see cref="AtPrompt"/> is set (the chat waits for the next turn): then the first Ctrl+C only says how to quit and
/// the second ends the process, so a stray Ctrl+C never leaves a cancelled token behind for the next answer.
/// </summary>
internal sealed class Interrupts : IDisposable
{
    private readonly CancellationTokenSource _process = new();
    private CancellationTokenSource? _operation;
    private int _promptPresses;

    /// <summary>Set while the interactive chat waits for a line of input.</summary>
    public bool AtPrompt
    {
        get => Volatile.Read(ref _atPrompt);
        set { Volatile.Write(ref _atPrompt, value); if (value) Interlocked.Exchange(ref _promptPresses, 0); }
    }
    private bool _atPrompt;

    public CancellationToken Process => _process.Token;

    public Interrupts() => Console.CancelKeyPress += OnCancel;

    private void OnCancel(object? sender, ConsoleCancelEventArgs e)
    {
        var op = Volatile.Read(ref _operation);
        if (op is not null && !op.IsCancellationRequested) { op.Cancel(); e.Cancel = true; return; }
        if (AtPrompt)
        {
            if (Interlocked.Increment(ref _promptPresses) == 1)
            {
                Console.Error.WriteLine();
                Console.Error.WriteLine("(Ctrl+C again quits; /exit ends the chat)");
                e.Cancel = true;
                return;
            }
            e.Cancel = false; // second Ctrl+C at the prompt: let the runtime end the process
            return;
        }
        if (!_process.IsCancellationRequested) { _process.Cancel(); e.Cancel = true; return; }
        e.Cancel = false; // second Ctrl+C: let the runtime end the process
    }

    /// <summary>A cancellation source for one operation, linked to the process's; dispose it when the operation ends.</summary>
    public Scope ForOperation()
    {
        var cts = CancellationTokenSource.CreateLinkedTokenSource(_process.Token);
        Volatile.Write(ref _operation, cts);
        return new Scope(this, cts);
    }

    public sealed class Scope(Interrupts owner, CancellationTokenSource cts) : IDisposable
    {
        public CancellationToken Token => cts.Token;
        public void Dispose()
        {
            Interlocked.CompareExchange(ref owner._operation, null, cts);
            cts.Dispose();
        }
    }

    public void Dispose()
    {
        Console.CancelKeyPress -= OnCancel;
        _process.Dispose();
    }
}
