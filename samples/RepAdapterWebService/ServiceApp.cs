using System.Text.Json.Serialization;
using Microsoft.AspNetCore.Http.Features;

namespace RepAdapterWebService;

/// <summary>The service as a library: <see cref="Build"/> returns the app, not started, so a test can run it in-process.</summary>
public static class ServiceApp
{
    /// <summary>
    /// Loads the model and maps POST /predict and GET /health. The model is loaded here, not at the first request, so
    /// that a bad file stops the start with its error. Start the app with StartAsync (then read the bound addresses, port
    /// 0 included, from its Urls) or RunAsync; StopAsync lets requests in flight finish for up to
    /// <see cref="ServiceOptions.ShutdownTimeout"/>, and disposing the app frees the model.
    /// </summary>
    public static WebApplication Build(ServiceOptions options)
    {
        options.Validate();
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls(options.Urls.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.Limits.MaxRequestBodySize = options.MaxBodyBytes);
        builder.Services.Configure<FormOptions>(form => form.MultipartBodyLengthLimit = options.MaxBodyBytes);
        builder.Services.Configure<HostOptions>(host => host.ShutdownTimeout = options.ShutdownTimeout);
        // Scores of a model that produced NaN must still serialise (as "NaN"), not turn a 200 into a 500.
        builder.Services.ConfigureHttpJsonOptions(json => json.SerializerOptions.NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals);
        // Per-request Information lines would cost more than scoring a small image; startup and errors are kept.
        builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);

        var classifier = ImageClassifier.Load(options.ModelPath, options.Kind, options.Concurrency);
        // Registered through factories, so that the container disposes them with the app (an instance it is handed it keeps).
        builder.Services.AddSingleton(_ => classifier);
        builder.Services.AddSingleton(_ => new ScoringGate(options.Concurrency, options.QueueLimit, options.QueueTimeout));
        builder.Services.AddSingleton(services => new PredictEndpoint(classifier, services.GetRequiredService<ScoringGate>(), options));

        var app = builder.Build();
        app.MapPost("/predict", (HttpContext context, PredictEndpoint endpoint) => endpoint.HandleAsync(context));
        app.MapGet("/health", (ImageClassifier served, ScoringGate gate) => HealthEndpoint.Read(served, gate));
        app.Logger.LogInformation("Serving {Path} ({Kind} model, fed {Input}); labels {Labels}; {Concurrency} scored at once, {Queue} queued.",
            options.ModelPath, classifier.Kind, classifier.Input, string.Join(", ", classifier.Labels), options.Concurrency, options.QueueLimit);
        return app;
    }
}
