using Microsoft.ML.Data;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

namespace Microsoft.ML.RepAdapter.MLNet;

/// <summary>
/// The output of <see cref="RepAdapterTransformerBase.Transform"/>: the input columns plus the task's output columns,
/// computed a batch of rows at a time. A second cursor over the input reads the image column ahead
/// of the row cursor; both walk the input in its natural order, which row ids confirm.
/// </summary>
internal sealed class BatchScoringDataView : IDataView
{
    private readonly IHost _host;
    private readonly IDataView _input;
    private readonly RepAdapterTransformerBase _scorer;

    private BatchScoringDataView(IHost host, IDataView input, RepAdapterTransformerBase scorer)
    {
        _host = host;
        _input = input;
        _scorer = scorer;
        var builder = new DataViewSchema.Builder();
        builder.AddColumns(input.Schema);
        foreach (var column in scorer.OutputColumnsFor(input.Schema)) builder.AddColumn(column.Name, column.Type, column.Annotations);
        Schema = builder.ToSchema();
    }

    public static IDataView Create(IHost host, IDataView input, RepAdapterTransformerBase scorer)
    {
        host.CheckValue(input, nameof(input));
        ImageColumn.Check(host, input.Schema, scorer.ImageColumnName);
        return new BatchScoringDataView(host, input, scorer);
    }

    public DataViewSchema Schema { get; }

    public bool CanShuffle => false;

    public long? GetRowCount() => _input.GetRowCount();

    public DataViewRowCursor GetRowCursor(IEnumerable<DataViewSchema.Column> columnsNeeded, Random? rand = null)
    {
        var needed = columnsNeeded.ToList();
        int inputCount = _input.Schema.Count;
        var inputColumns = needed.Where(c => c.Index < inputCount).Select(c => _input.Schema[c.Index]);
        bool scoring = needed.Any(c => c.Index >= inputCount);
        var rows = _input.GetRowCursor(inputColumns);
        var images = scoring ? _input.GetRowCursor([_input.Schema[_scorer.ImageColumnName]]) : null;
        return new Cursor(this, rows, images, [.. needed.Select(c => c.Index)]);
    }

    public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null) =>
        [GetRowCursor(columnsNeeded, rand)];

    private sealed class Cursor : DataViewRowCursor
    {
        private readonly BatchScoringDataView _parent;
        private readonly DataViewRowCursor _rows;
        private readonly DataViewRowCursor? _images;
        private readonly HashSet<int> _active;
        private readonly Func<ImageRead>? _readImage;
        private readonly ValueGetter<DataViewRowId> _rowId;
        private readonly ValueGetter<DataViewRowId>? _imageRowId;
        private readonly List<object> _batch = [];
        private readonly Dictionary<int, Delegate> _getters = [];
        private int _offset = -1;

        public Cursor(BatchScoringDataView parent, DataViewRowCursor rows, DataViewRowCursor? images, HashSet<int> active)
        {
            _parent = parent;
            _rows = rows;
            _images = images;
            _active = active;
            _rowId = rows.GetIdGetter();
            if (images is not null)
            {
                _readImage = ImageColumn.CreateReader(images, parent._scorer.ImageColumnName, parent._scorer.Preprocessor);
                _imageRowId = images.GetIdGetter();
            }
        }

        public override DataViewSchema Schema => _parent.Schema;
        public override long Position => _rows.Position;
        public override long Batch => _rows.Batch;

        public override bool MoveNext()
        {
            if (!_rows.MoveNext()) return false;
            if (_images is not null && ++_offset >= _batch.Count) ScoreNextBatch();
            return true;
        }

        private void ScoreNextBatch()
        {
            _parent._host.CheckAlive();
            _batch.Clear();
            _offset = 0;
            using var scope = NewDisposeScope();
            var images = new List<ImageRead>();
            DataViewRowId first = default;
            while (images.Count < _parent._scorer.ScoringBatchSize && _images!.MoveNext())
            {
                if (images.Count == 0) _imageRowId!(ref first);
                images.Add(_readImage!());
            }
            DataViewRowId current = default;
            _rowId(ref current);
            if (images.Count == 0 || !current.Equals(first))
                throw _parent._host.Except("The input data view returned rows in a different order to two cursors; batch scoring needs a deterministic order.");
            _batch.AddRange(_parent._scorer.ScoreRows(images));
        }

        public override bool IsColumnActive(DataViewSchema.Column column) => _active.Contains(column.Index);

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
        {
            int inputCount = _parent._input.Schema.Count;
            if (column.Index < inputCount) return _rows.GetGetter<TValue>(_parent._input.Schema[column.Index]);
            if (!IsColumnActive(column)) throw _parent._host.Except($"Column '{column.Name}' was not requested from the cursor.");
            if (!_getters.TryGetValue(column.Index, out var getter))
                _getters[column.Index] = getter = _parent._scorer.GetterFor(column.Index - inputCount, () => _batch[_offset]);
            return getter as ValueGetter<TValue>
                ?? throw _parent._host.Except($"Column '{column.Name}' is {column.Type}, not {typeof(TValue).Name}.");
        }

        public override ValueGetter<DataViewRowId> GetIdGetter() => _rowId;

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                _rows.Dispose();
                _images?.Dispose();
            }
            base.Dispose(disposing);
        }
    }
}
