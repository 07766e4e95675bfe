using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.ML.RepAdapter.Formats;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.Training;

/// <summary>
/// Where a run stands after an epoch: the epochs done and their reports, early stopping's best score and patience,
/// and a copy of the best epoch's trainable weights and buffers.
/// </summary>
internal sealed class TrainingProgress
{
    public int EpochsDone { get; set; }
    public List<EpochReport> Reports { get; set; } = [];
    public bool Stopped { get; set; }
    public double? BestScore { get; set; }
    public int? BestEpoch { get; set; }
    public int EpochsWithoutImprovement { get; set; }

    /// <summary>The best epoch's trainable parameters and buffers (CPU copies), when early stopping keeps one; saved apart.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public Dictionary<string, Tensor>? Best { get; set; }

    /// <summary>Counts <paramref name="report"/>'s epoch and, with early stopping, compares it with the best so far.</summary>
    public TrainingProgress After(EpochReport report, EarlyStopping? stopping, nn.Module model)
    {
        EpochsDone = report.Epoch;
        Reports.Add(report);
        if (stopping is null) return this;
        double score = stopping.Metric == EarlyStoppingMetric.ValidationLoss ? -report.ValidationLoss!.Value : report.ValidationMetric!.Value;
        if (BestScore is null || score > BestScore + stopping.MinDelta)
        {
            (BestScore, BestEpoch, EpochsWithoutImprovement) = (score, report.Epoch, 0);
            Dispose(Best);
            Best = Snapshot(model);
        }
        else if (++EpochsWithoutImprovement >= stopping.Patience)
        {
            Stopped = true;
        }
        return this;
    }

    /// <summary>Puts the best epoch's weights back into <paramref name="model"/> (nothing without early stopping).</summary>
    public void RestoreBest(nn.Module model)
    {
        if (Best is null) return;
        var state = model.state_dict();
        using (no_grad())
        {
            foreach (var (name, value) in Best) state[name].copy_(value);
        }
    }

    /// <summary>The tensors a run changes: its trainable parameters and every buffer (e.g. a head's BatchNorm statistics).</summary>
    public static Dictionary<string, Tensor> Snapshot(nn.Module model)
    {
        var names = model.named_parameters().Where(p => p.parameter.requires_grad).Select(p => p.name)
            .Concat(model.named_buffers().Select(b => b.name)).ToHashSet();
        return model.state_dict().Where(p => names.Contains(p.Key)).ToDictionary(p => p.Key, p => p.Value.detach().cpu().clone());
    }

    public static void Dispose(Dictionary<string, Tensor>? tensors)
    {
        if (tensors is null) return;
        foreach (var tensor in tensors.Values) tensor.Dispose();
    }
}

/// <summary>
/// A run's state saved after every epoch in a folder the user names, so that a killed run continues where it stopped
/// and ends as an uninterrupted one would: the trainable weights and buffers, the optimiser's state, the random
/// generator's state and the <see cref="TrainingProgress"/>. Epoch orders depend only on (seed, epoch), and the frozen
/// weights come from the same source, so nothing else is needed. A state written by a different run (other settings,
/// data size or trainable parameters, told by a fingerprint) is refused rather than mixed in.
/// </summary>
internal sealed class TrainingState(string folder, string run, string fingerprint)
{
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    private string RunFolder => Path.Combine(folder, string.Concat(run.Select(c => char.IsLetterOrDigit(c) || c is '.' or '-' ? c : '_')));

    private string NextFolder => RunFolder + ".next";

    /// <summary>Settings, trainable parameter names and shapes, and data sizes: what must match to resume.</summary>
    public static string Fingerprint(FineTuneSettings settings, IEnumerable<(string name, Parameter parameter)> trainable, int trainCount, int validationCount)
    {
        var text = new StringBuilder($"{settings}|{trainCount}|{validationCount}");
        foreach (var (name, parameter) in trainable) text.Append($"|{name}:{string.Join("x", parameter.shape)}");
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())));
    }

    /// <summary>Loads the saved state into <paramref name="model"/> and <paramref name="optimizer"/>; a fresh progress when there is none.</summary>
    public TrainingProgress TryResume(nn.Module model, OptimizerHelper optimizer)
    {
        string progressPath = Path.Combine(RunFolder, "progress.json");
        // Killed between removing the old state and moving the new one in: the new one is complete (progress.json is
        // written last), so it is the state to resume from.
        if (!Directory.Exists(RunFolder) && File.Exists(Path.Combine(NextFolder, "progress.json"))) Directory.Move(NextFolder, RunFolder);
        if (!File.Exists(progressPath)) return new TrainingProgress();
        var saved = JsonSerializer.Deserialize<SavedProgress>(File.ReadAllText(progressPath), Json)
            ?? throw new InvalidDataException($"{progressPath}: empty training state.");
        if (saved.Fingerprint != fingerprint)
            throw new InvalidOperationException(
                $"The training state in {RunFolder} was saved by a different run (other settings, data or trainable parameters): delete it, or name another folder, to start afresh.");
        using var scope = NewDisposeScope();
        var state = model.state_dict();
        using (var weights = CheckpointReader.Read(Path.Combine(RunFolder, "weights.safetensors")))
        using (no_grad())
        {
            foreach (var (name, value) in weights.Tensors) state[name].copy_(value);
        }
        optimizer.load_state_dict(Path.Combine(RunFolder, "optimizer.bin"));
        random.set_rng_state(tensor(File.ReadAllBytes(Path.Combine(RunFolder, "rng.bin")), ScalarType.Byte));
        var progress = saved.Progress;
        string bestPath = Path.Combine(RunFolder, "best.safetensors");
        if (File.Exists(bestPath))
        {
            using var best = CheckpointReader.Read(bestPath);
            progress.Best = best.Tensors.ToDictionary(p => p.Key, p => p.Value.clone());
            foreach (var tensor in progress.Best.Values) scope.Detach(tensor);
        }
        return progress;
    }

    /// <summary>Writes the state after an epoch: into a new folder first, which then replaces the old one.</summary>
    public void Save(nn.Module model, OptimizerHelper optimizer, TrainingProgress progress)
    {
        string next = NextFolder;
        if (Directory.Exists(next)) Directory.Delete(next, recursive: true);
        Directory.CreateDirectory(next);
        using (var scope = NewDisposeScope())
        {
            SafeTensorsWriter.Write(Path.Combine(next, "weights.safetensors"), TrainingProgress.Snapshot(model));
            if (progress.Best is { } best) SafeTensorsWriter.Write(Path.Combine(next, "best.safetensors"), best);
            optimizer.save_state_dict(Path.Combine(next, "optimizer.bin"));
            File.WriteAllBytes(Path.Combine(next, "rng.bin"), random.get_rng_state().data<byte>().ToArray());
        }
        File.WriteAllText(Path.Combine(next, "progress.json"), JsonSerializer.Serialize(new SavedProgress(fingerprint, progress), Json));
        if (Directory.Exists(RunFolder)) Directory.Delete(RunFolder, recursive: true);
        Directory.Move(next, RunFolder);
    }

    private sealed record SavedProgress(string Fingerprint, TrainingProgress Progress);
}
