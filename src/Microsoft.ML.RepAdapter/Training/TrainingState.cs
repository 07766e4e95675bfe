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
/// <remarks>
/// The files are untrusted on resume (a disk error, an edit, a copy from another run): a manifest written last
/// (<c>manifest.sha256</c>, <c>sha256sum</c>'s format) holds every file's SHA-256, and each file is checked against it
/// before any byte reaches libtorch, which would otherwise be handed a damaged random-generator state or optimiser file
/// unchecked. A lock file keeps a second <c>Fit</c> out of the same run's state while this one holds it.
/// </remarks>
internal sealed class TrainingState : IDisposable
{
    private const string Manifest = "manifest.sha256";
    private const string Progress = "progress.json";
    private const string Weights = "weights.safetensors";
    private const string Best = "best.safetensors";
    private const string Optimizer = "optimizer.bin";
    private const string Generator = "rng.bin";
    private static readonly string[] KnownFiles = [Progress, Weights, Best, Optimizer, Generator];
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    private readonly string runFolder;
    private readonly string fingerprint;
    private readonly FileStream runLock;

    /// <summary>Checks that <paramref name="folder"/> can hold the state, and takes the run's lock.</summary>
    /// <exception cref="InvalidOperationException">The folder is a file or cannot be created, or another Fit holds the run's state.</exception>
    public TrainingState(string folder, string run, string fingerprint)
    {
        runFolder = Path.Combine(folder, string.Concat(run.Select(c => char.IsLetterOrDigit(c) || c is '.' or '-' ? c : '_')));
        this.fingerprint = fingerprint;
        CheckFolder(folder);
        try
        {
            // FileShare.None is an exclusive lock on Unix too (flock), so a second process or Fit is refused at once.
            runLock = new FileStream(runFolder + ".lock", FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.DeleteOnClose);
        }
        catch (IOException e)
        {
            throw new InvalidOperationException(
                $"TrainingStateFolder '{folder}': another Fit is training with the state of run '{run}' ({runFolder}.lock is held). "
                + "Give each concurrent Fit its own folder.", e);
        }
    }

    private string NextFolder => runFolder + ".next";

    /// <summary>Refuses a <c>TrainingStateFolder</c> that is a file or cannot be created, before any training.</summary>
    /// <exception cref="InvalidOperationException">Naming the folder and why.</exception>
    public static void CheckFolder(string folder)
    {
        if (File.Exists(folder)) throw new InvalidOperationException($"TrainingStateFolder '{folder}' is a file: name a folder (it is created if missing).");
        try
        {
            Directory.CreateDirectory(folder);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
        {
            throw new InvalidOperationException($"TrainingStateFolder '{folder}' cannot be created: {e.Message}", e);
        }
    }

    /// <summary>Settings, trainable parameter names and shapes, and data sizes: what must match to resume.</summary>
    public static string Fingerprint(FineTuneSettings settings, IEnumerable<(string name, Parameter parameter)> trainable, int trainCount, int validationCount)
    {
        var text = new StringBuilder($"{settings}|{trainCount}|{validationCount}");
        foreach (var (name, parameter) in trainable) text.Append($"|{name}:{string.Join("x", parameter.shape)}");
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())));
    }

    /// <summary>Loads the saved state into <paramref name="model"/> and <paramref name="optimizer"/>; a fresh progress when there is none.</summary>
    /// <exception cref="InvalidDataException">A file of the state is missing, damaged or not what was saved; the message names it.</exception>
    /// <exception cref="InvalidOperationException">The state was saved by a different run.</exception>
    public TrainingProgress TryResume(nn.Module model, OptimizerHelper optimizer)
    {
        // Killed between removing the old state and moving the new one in: the new one is complete (its manifest is
        // written last), so it is the state to resume from.
        if (!Directory.Exists(runFolder) && File.Exists(Path.Combine(NextFolder, Manifest))) Directory.Move(NextFolder, runFolder);
        if (!Directory.Exists(runFolder) || !Directory.EnumerateFileSystemEntries(runFolder).Any()) return new TrainingProgress();
        var files = VerifiedFiles();
        var saved = ReadProgress(files[Progress]);
        if (saved.Fingerprint != fingerprint)
            throw new InvalidOperationException(
                $"The training state in {runFolder} was saved by a different run (other settings, data or trainable parameters): delete it, or name another folder, to start afresh.");
        using var scope = NewDisposeScope();
        var state = model.state_dict();
        using (var weights = ReadTensors(files, Weights, state))
        using (no_grad())
        {
            foreach (var (name, value) in weights.Tensors) state[name].copy_(value);
        }
        Load(files[Optimizer], () => optimizer.load_state_dict(files[Optimizer]));
        var generator = File.ReadAllBytes(files[Generator]);
        long expected = random.get_rng_state().NumberOfElements;
        if (generator.Length != expected)
            throw Damaged(files[Generator], $"it holds {generator.Length} bytes; the random generator's state is {expected}");
        Load(files[Generator], () => random.set_rng_state(tensor(generator, ScalarType.Byte)));
        var progress = saved.Progress;
        if (files.ContainsKey(Best))
        {
            using var best = ReadTensors(files, Best, state);
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
            SafeTensorsWriter.Write(Path.Combine(next, Weights), TrainingProgress.Snapshot(model));
            if (progress.Best is { } best) SafeTensorsWriter.Write(Path.Combine(next, Best), best);
            optimizer.save_state_dict(Path.Combine(next, Optimizer));
            File.WriteAllBytes(Path.Combine(next, Generator), random.get_rng_state().data<byte>().ToArray());
        }
        File.WriteAllText(Path.Combine(next, Progress), JsonSerializer.Serialize(new SavedProgress(fingerprint, progress), Json));
        var lines = KnownFiles.Where(f => File.Exists(Path.Combine(next, f))).Select(f => $"{Hash(Path.Combine(next, f))}  {f}\n");
        File.WriteAllText(Path.Combine(next, Manifest), string.Concat(lines));
        if (Directory.Exists(runFolder)) Directory.Delete(runFolder, recursive: true);
        Directory.Move(next, runFolder);
    }

    /// <summary>Releases the run's lock.</summary>
    public void Dispose() => runLock.Dispose();

    /// <summary>The state's files by name, each checked against the manifest's SHA-256.</summary>
    private Dictionary<string, string> VerifiedFiles()
    {
        string manifest = Path.Combine(runFolder, Manifest);
        if (!File.Exists(manifest))
            throw new InvalidDataException($"{runFolder}: no {Manifest}: this is not a complete training state (written by an older version, or damaged). Delete it to start afresh.");
        var files = new Dictionary<string, string>();
        // A few short lines: anything longer is not a manifest this class wrote.
        if (new FileInfo(manifest).Length > 4096) throw Damaged(manifest, "it is larger than any manifest this library writes");
        foreach (string line in File.ReadAllLines(manifest).Where(l => l.Length > 0))
        {
            var parts = line.Split("  ", 2);
            if (parts.Length != 2 || parts[0].Length != 64 || !KnownFiles.Contains(parts[1]) || files.ContainsKey(parts[1]))
                throw Damaged(manifest, $"line '{line}' is not '<sha256>  <one of {string.Join(", ", KnownFiles)}>'");
            string path = Path.Combine(runFolder, parts[1]);
            if (!File.Exists(path)) throw Damaged(path, "the file is missing");
            if (!string.Equals(Hash(path), parts[0], StringComparison.OrdinalIgnoreCase))
                throw Damaged(path, $"its SHA-256 differs from the one in {Manifest} (truncated, edited, or copied from another run)");
            files[parts[1]] = path;
        }
        foreach (string required in new[] { Progress, Weights, Optimizer, Generator })
        {
            if (!files.ContainsKey(required)) throw Damaged(manifest, $"it does not list {required}");
        }
        return files;
    }

    private SavedProgress ReadProgress(string path)
    {
        try
        {
            return JsonSerializer.Deserialize<SavedProgress>(File.ReadAllText(path), Json) ?? throw Damaged(path, "it is empty");
        }
        catch (JsonException e)
        {
            throw Damaged(path, $"it is not the progress this library writes ({e.Message})");
        }
    }

    /// <summary>A saved tensor file whose every key and shape matches <paramref name="state"/>.</summary>
    private TensorCheckpoint ReadTensors(Dictionary<string, string> files, string name, Dictionary<string, Tensor> state)
    {
        string path = files[name];
        var checkpoint = CheckpointReader.Read(path);
        foreach (var (key, value) in checkpoint.Tensors)
        {
            string? problem = !state.TryGetValue(key, out var target) ? "the model has no such tensor"
                : !target.shape.SequenceEqual(value.shape) ? $"its shape [{string.Join(", ", value.shape)}] is not the model's [{string.Join(", ", target.shape)}]"
                : null;
            if (problem is not null)
            {
                checkpoint.Dispose();
                throw Damaged(path, $"key '{key}': {problem}");
            }
        }
        return checkpoint;
    }

    /// <summary>Runs a libtorch load of a verified file, naming the file if libtorch still refuses it.</summary>
    private void Load(string path, Action load)
    {
        try
        {
            load();
        }
        catch (Exception e) when (e is System.Runtime.InteropServices.ExternalException or ArgumentException or InvalidOperationException or IOException)
        {
            throw Damaged(path, $"libtorch cannot load it ({e.Message})");
        }
    }

    private static string Hash(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }

    private InvalidDataException Damaged(string path, string why) =>
        new($"Training state file '{path}' cannot be resumed from: {why}. Delete {runFolder} to start afresh.");

    private sealed record SavedProgress(string Fingerprint, TrainingProgress Progress);
}
