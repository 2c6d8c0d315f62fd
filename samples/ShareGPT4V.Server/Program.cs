using ShareGPT4V.Server;

// sharegpt4v-server: the OpenAI-compatible server and web demo (see ServerOptions.Usage).
if (args.Length == 0 || args.Contains("--help") || args.Contains("-h"))
{
    Console.Out.Write(ServerOptions.Usage);
    return args.Length == 0 ? 2 : 0;
}
ServerOptions options;
try
{
    options = ServerOptions.Parse(args);
    options.Validate();
}
catch (ServerUsageException e)
{
    Console.Error.WriteLine($"sharegpt4v-server: {e.Message}");
    Console.Error.WriteLine("Run with --help for the options.");
    return 2;
}
var app = ServerApp.Build(options);
await app.RunAsync();
return Environment.ExitCode;
