// A host that registers ShareGPT4V with dependency injection and captions an image through IChatClient.
// Usage: dotnet run --project samples/ShareGPT4V.HostedExample -- <model folder> <image file>
// Settings can also come from configuration: ShareGPT4V:ModelPath, ShareGPT4V:Template, ShareGPT4V:Device (cpu,
// cuda:N, auto), ShareGPT4V:LibTorchDirectory (a CUDA libtorch's lib folder, see docs/cuda.md), ...
using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using ShareGPT4V.Cuda;
using ShareGPT4V.Hosting;

if (args.Length < 2)
{
    Console.Error.WriteLine("usage: ShareGPT4V.HostedExample <model folder> <image file>");
    return 2;
}

var builder = Host.CreateApplicationBuilder();
builder.Logging.SetMinimumLevel(LogLevel.Information);
var section = builder.Configuration.GetSection("ShareGPT4V");
builder.Services.AddShareGPT4VCuda(o => o.LibTorchDirectory = section["LibTorchDirectory"]); // nothing is probed unless Device asks for CUDA
builder.Services.AddShareGPT4V(options =>
{
    options.ModelPath = section["ModelPath"] ?? args[0];
    options.Device = section["Device"] ?? "cpu";
    options.Template = section["Template"];
    options.MaxNewTokens = int.TryParse(section["MaxNewTokens"], out var n) ? n : 64;
});
builder.Services.AddHostedService(sp => new CaptionOnce(sp.GetRequiredService<IChatClient>(), args[1], sp.GetRequiredService<IHostApplicationLifetime>()));

using var host = builder.Build();
await host.RunAsync();
return Environment.ExitCode;

/// <summary>Captions one image at start-up, prints it, and stops the host.</summary>
sealed class CaptionOnce(IChatClient client, string imagePath, IHostApplicationLifetime lifetime) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try
        {
            var message = new ChatMessage(ChatRole.User, new AIContent[]
            {
                new TextContent("Describe this image in detail."),
                new DataContent(await File.ReadAllBytesAsync(imagePath, stoppingToken), "image/" + Path.GetExtension(imagePath).TrimStart('.').ToLowerInvariant()),
            });
            await foreach (var update in client.GetStreamingResponseAsync(new[] { message }, cancellationToken: stoppingToken))
            {
                Console.Write(update.Text);
                if (update.Contents.OfType<UsageContent>().FirstOrDefault() is { } usage)
                    Console.WriteLine($"\n[{usage.Details.InputTokenCount} prompt tokens, {usage.Details.OutputTokenCount} generated, finish: {update.FinishReason}]");
            }
        }
        catch (Exception e) when (e is ShareGPT4V.ShareGPT4VException or IOException)
        {
            Console.Error.WriteLine("error: " + e.Message);
            Environment.ExitCode = 1;
        }
        finally
        {
            lifetime.StopApplication();
        }
    }
}
