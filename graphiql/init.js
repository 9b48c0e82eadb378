// Mounts GraphiQL on the playground page. Served by the gateway from
// /playground/assets/ like React and GraphiQL (the UMD globals React, ReactDOM
// and GraphiQL), so that the page's CSP can be `script-src 'self'`.
//
// The gateway writes the page's defaults as JSON into
// <script type="application/json" id="playground-defaults">:
//   { "query": "...", "variables": "<JSON>", "headers": "<JSON>", "statsQuery": "...", "key": "<hash>" }
(function () {
  'use strict';

  var mount = document.getElementById('graphiql');
  var defaults = JSON.parse(document.getElementById('playground-defaults').textContent);
  // The page is served by the endpoint itself: GET shows it, POST runs queries.
  var endpoint = window.location.pathname;

  function pretty(json) {
    try {
      return JSON.stringify(JSON.parse(json), null, 2);
    } catch (e) {
      return json;
    }
  }

  // GraphiQL keeps its tabs, history and layout in localStorage and prefers
  // them to the defaults. Key that state by the defaults, so that the first
  // visit, and the first after the defaults change, opens with the example; a
  // reload keeps what the user typed. State stored for other defaults is
  // dropped. Without localStorage, state lives as long as the page.
  function storageFor(key) {
    var prefix = 'visits-gateway:' + key + ':';
    var local = null;
    try {
      local = window.localStorage;
      local.getItem(prefix);
    } catch (e) {
      local = null;
    }
    var memory = Object.create(null);
    function ownKeys() {
      var keys = [];
      if (local) {
        for (var i = 0; i < local.length; i++) {
          var k = local.key(i);
          if (k !== null && k.indexOf(prefix) === 0) keys.push(k.slice(prefix.length));
        }
      } else {
        keys = Object.keys(memory);
      }
      return keys;
    }
    if (local) {
      var stale = [];
      for (var i = 0; i < local.length; i++) {
        var k = local.key(i);
        if (k !== null && k.indexOf('visits-gateway:') === 0 && k.indexOf(prefix) !== 0) stale.push(k);
      }
      stale.forEach(function (k) { local.removeItem(k); });
    }
    return {
      getItem: function (k) {
        if (local) return local.getItem(prefix + k);
        return k in memory ? memory[k] : null;
      },
      setItem: function (k, v) {
        if (local) local.setItem(prefix + k, v);
        else memory[k] = String(v);
      },
      removeItem: function (k) {
        if (local) local.removeItem(prefix + k);
        else delete memory[k];
      },
      clear: function () {
        var self = this;
        ownKeys().forEach(function (k) { self.removeItem(k); });
      },
      get length() {
        return ownKeys().length;
      },
    };
  }

  // GraphiQL re-reads the operations in the editor only after a pause, so a
  // query pasted over the example and run at once goes out with the example's
  // operation name (NewestVisits), which the server refuses as unknown. Drop
  // an operation name that the document being sent does not define. The
  // document is parsed with graphql-js, which GraphiQL's bundle exposes as
  // GraphiQL.GraphQL; one that does not parse is sent as it is, for the
  // server to report its syntax error.
  function withDefinedOperationName(params) {
    var graphql = GraphiQL.GraphQL;
    if (!params.operationName || !graphql || typeof params.query !== 'string') return params;
    var ast;
    try {
      ast = graphql.parse(params.query);
    } catch (e) {
      return params;
    }
    var defined = ast.definitions.some(function (definition) {
      return (
        definition.kind === graphql.Kind.OPERATION_DEFINITION &&
        definition.name != null &&
        definition.name.value === params.operationName
      );
    });
    if (defined) return params;
    var sent = Object.assign({}, params);
    delete sent.operationName;
    return sent;
  }

  // Subscriptions go over WebSocket (graphql-transport-ws) to the same path,
  // through the graphql-ws client in GraphiQL's bundle; the headers editor's
  // headers become the connection_init payload (its Authorization entry).
  var subscriptionUrl =
    (window.location.protocol === 'https:' ? 'wss://' : 'ws://') + window.location.host + endpoint;
  var wsFetcher = GraphiQL.createFetcher({ url: endpoint, subscriptionUrl: subscriptionUrl });

  // The subscription `params` runs, with the document parsed: null when it
  // runs a query (or does not parse: the server reports that).
  function subscriptionOf(params) {
    var graphql = GraphiQL.GraphQL;
    if (!graphql || typeof params.query !== 'string') return null;
    var ast;
    try {
      ast = graphql.parse(params.query);
    } catch (e) {
      return null;
    }
    var operation = ast.definitions.filter(function (definition) {
      return (
        definition.kind === graphql.Kind.OPERATION_DEFINITION &&
        (!params.operationName || (definition.name && definition.name.value === params.operationName))
      );
    })[0];
    return operation && operation.operation === 'subscription' ? { ast: ast, operation: operation } : null;
  }

  // The statistics panel: for any result holding `userVisitStats` (a query's,
  // or each of a subscription's as it fills in and moves), its headline
  // figures, its progress and a bar chart of its timeline. Drawn with the
  // DOM and SVG attributes only: the page's CSP allows no inline style.
  var SVG = 'http://www.w3.org/2000/svg';
  var panel = null;

  function svg(name, attributes) {
    var element = document.createElementNS(SVG, name);
    Object.keys(attributes).forEach(function (k) {
      element.setAttribute(k, String(attributes[k]));
    });
    return element;
  }

  function findStats(result) {
    var data = result && result.data;
    if (!data || typeof data !== 'object') return null;
    var keys = Object.keys(data);
    for (var i = 0; i < keys.length; i++) {
      var value = data[keys[i]];
      if (value && typeof value === 'object' && ('visits' in value || 'timeline' in value || 'progress' in value)) {
        return value;
      }
    }
    return null;
  }

  function showStats(result) {
    var stats = findStats(result);
    if (!stats) return;
    if (!panel) {
      panel = document.createElement('aside');
      panel.id = 'stats-panel';
      panel.setAttribute('aria-label', 'statistics');
      var close = document.createElement('button');
      close.className = 'stats-close';
      close.type = 'button';
      close.textContent = '×';
      close.title = 'Hide the statistics panel';
      close.addEventListener('click', function () {
        panel.hidden = true;
      });
      panel.appendChild(close);
      panel.appendChild(document.createElement('div')).className = 'stats-headline';
      panel.appendChild(document.createElement('div')).className = 'stats-progress';
      panel.appendChild(document.createElement('div')).className = 'stats-chart';
      document.body.appendChild(panel);
    }
    panel.hidden = false;
    var number = function (n) {
      return typeof n === 'number' ? n.toLocaleString() : '–';
    };
    var headline = number(stats.visits) + ' visits';
    if (typeof stats.uniqueVisitors === 'number') headline += ' · ' + number(stats.uniqueVisitors) + ' visitors';
    if (stats.peakConcurrentViewers) headline += ' · peak ' + number(stats.peakConcurrentViewers.viewers);
    panel.querySelector('.stats-headline').textContent = headline;
    panel.dataset.visits = typeof stats.visits === 'number' ? String(stats.visits) : '';

    var progress = stats.progress;
    var bar = panel.querySelector('.stats-progress');
    bar.textContent = '';
    if (progress) {
      panel.dataset.complete = String(!!progress.complete);
      var share = progress.pagesNeeded > 0 ? Math.min(1, progress.pagesRead / progress.pagesNeeded) : 1;
      var track = svg('svg', { width: 200, height: 8, viewBox: '0 0 200 8', role: 'img' });
      track.appendChild(svg('rect', { width: 200, height: 8, rx: 4, class: 'stats-track' }));
      track.appendChild(svg('rect', { width: Math.round(200 * share), height: 8, rx: 4, class: 'stats-fill' }));
      bar.appendChild(track);
      var label = document.createElement('span');
      label.textContent = progress.complete
        ? ' complete (' + number(progress.pagesRead) + ' pages)'
        : ' loading: ' + number(progress.pagesRead) + ' of ' + number(progress.pagesNeeded) + ' pages';
      bar.appendChild(label);
    }

    var chart = panel.querySelector('.stats-chart');
    chart.textContent = '';
    var timeline = Array.isArray(stats.timeline) ? stats.timeline : [];
    panel.dataset.buckets = String(timeline.length);
    if (timeline.length === 0) return;
    var width = 360;
    var height = 90;
    var most = Math.max.apply(null, timeline.map(function (b) { return b.visits || 0; }).concat([1]));
    var step = width / timeline.length;
    var plot = svg('svg', { width: width, height: height + 14, viewBox: '0 0 ' + width + ' ' + (height + 14), role: 'img' });
    var title = svg('title', {});
    title.textContent = 'visits per bucket of the timeline';
    plot.appendChild(title);
    timeline.forEach(function (bucket, i) {
      var h = Math.round((height * (bucket.visits || 0)) / most);
      var rect = svg('rect', {
        x: (i * step + step * 0.1).toFixed(1),
        y: height - h,
        width: Math.max(1, step * 0.8).toFixed(1),
        height: h,
        class: 'stats-bar',
      });
      var tip = svg('title', {});
      tip.textContent = (bucket.start || '') + ': ' + number(bucket.visits) + ' visits';
      rect.appendChild(tip);
      plot.appendChild(rect);
    });
    var first = svg('text', { x: 0, y: height + 12, class: 'stats-axis' });
    first.textContent = String(timeline[0].start || '').slice(0, 10);
    plot.appendChild(first);
    var last = svg('text', { x: width, y: height + 12, 'text-anchor': 'end', class: 'stats-axis' });
    last.textContent = String(timeline[timeline.length - 1].start || '').slice(0, 10);
    plot.appendChild(last);
    chart.appendChild(plot);
  }

  // Hands each result to the panel on its way to GraphiQL: a promise's, an
  // async iterable's (subscriptions over graphql-ws, possibly behind a
  // promise) or an observable's.
  function observed(result) {
    if (result && typeof result.then === 'function') {
      // GraphiQL's own fetcher resolves to a subscription's iterable.
      return result.then(function (value) {
        if (value && (typeof value[Symbol.asyncIterator] === 'function' || typeof value.subscribe === 'function')) {
          return observed(value);
        }
        showStats(value);
        return value;
      });
    }
    if (result && typeof result[Symbol.asyncIterator] === 'function') {
      var wrapped = {};
      wrapped[Symbol.asyncIterator] = function () {
        var inner = result[Symbol.asyncIterator]();
        return {
          next: function () {
            return inner.next().then(function (step) {
              if (!step.done) showStats(step.value);
              return step;
            });
          },
          return: function (value) {
            return inner.return ? inner.return(value) : Promise.resolve({ done: true, value: value });
          },
          throw: function (error) {
            return inner.throw ? inner.throw(error) : Promise.reject(error);
          },
        };
      };
      return wrapped;
    }
    if (result && typeof result.subscribe === 'function') {
      return {
        subscribe: function (observer) {
          return result.subscribe({
            next: function (value) {
              showStats(value);
              if (observer.next) observer.next(value);
            },
            error: function (e) {
              if (observer.error) observer.error(e);
            },
            complete: function () {
              if (observer.complete) observer.complete();
            },
          });
        },
      };
    }
    return result;
  }

  // POSTs the operation as JSON, with the headers from the headers editor.
  // A body that is not JSON (a proxy's error page, say) becomes a GraphQL
  // error, so that the result pane shows what happened.
  function fetcher(params, options) {
    return observed(send(params, options));
  }

  function send(params, options) {
    // The operation name first: a stale one (the tab switched a moment ago)
    // would hide the subscription the document defines.
    params = withDefinedOperationName(params);
    var subscription = subscriptionOf(params);
    if (subscription) {
      // GraphiQL's own fetcher picks WebSocket from the document it parsed
      // last, which lags the editor: hand it this one, and its operation's
      // name.
      var name = subscription.operation.name && subscription.operation.name.value;
      if (name && !params.operationName) params = Object.assign({}, params, { operationName: name });
      return wsFetcher(params, Object.assign({}, options, { documentAST: subscription.ast }));
    }
    var headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
    var extra = (options && options.headers) || {};
    Object.keys(extra).forEach(function (name) {
      headers[name] = String(extra[name]);
    });
    return fetch(endpoint, {
      method: 'POST',
      headers: headers,
      body: JSON.stringify(params),
      credentials: 'same-origin',
    }).then(function (response) {
      return response.text().then(function (text) {
        try {
          return JSON.parse(text);
        } catch (e) {
          return {
            errors: [{ message: 'HTTP ' + response.status + ' ' + response.statusText + ': ' + text }],
          };
        }
      });
    });
  }

  var variables = pretty(defaults.variables);
  var headers = pretty(defaults.headers);
  var storage = storageFor(defaults.key);
  var props = {
    fetcher: fetcher,
    storage: storage,
    defaultTabs: [
      { query: defaults.query, variables: variables, headers: headers },
      // The statistics example: a second tab, whose query needs no variables.
      { query: defaults.statsQuery, headers: headers },
    ],
    defaultQuery: defaults.query,
    // Headers are not persisted (they may hold an API key): every visit
    // starts with these.
    defaultHeaders: headers,
    shouldPersistHeaders: false,
    defaultEditorToolsVisibility: 'variables',
  };
  // GraphiQL 4 fills the variables editor from the `variables` prop or from
  // storage, never from defaultTabs. So pass the example's variables on a
  // first visit only; later visits restore what the user left there.
  if (storage.getItem('graphiql:tabState') === null) {
    props.variables = variables;
  }
  ReactDOM.createRoot(mount).render(React.createElement(GraphiQL, props));
})();
